// sft report: each eval row's thumbnails (kept once, in #pictures) shown in every table, columns sorted on a click,
// and a filter to the rows whose prediction changed since the evaluation before.
(function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll("img[data-picture]"), function (img) {
    var source = document.getElementById(img.dataset.picture);
    if (source) { img.src = source.src; img.width = source.width; img.height = source.height; }
  });

  function key(row, column, numeric) {
    var cell = row.cells[column];
    var raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
    if (!numeric) { return raw.toLowerCase(); }
    return raw === "" ? -Infinity : parseFloat(raw);
  }

  Array.prototype.forEach.call(document.querySelectorAll("th[data-sort]"), function (header) {
    header.addEventListener("click", function () {
      var table = header.closest("table"), body = table.tBodies[0];
      var column = header.cellIndex, numeric = header.dataset.sort === "number";
      var descending = header.dataset.order !== "descending";  // first click: highest score first
      Array.prototype.forEach.call(table.querySelectorAll("th[data-sort]"), function (other) { delete other.dataset.order; });
      header.dataset.order = descending ? "descending" : "ascending";
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, column, numeric), y = key(b, column, numeric);
        return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });

  Array.prototype.forEach.call(document.querySelectorAll("input.only-changed"), function (box) {
    box.addEventListener("change", function () {
      var table = box.closest("section").querySelector("table.predictions");
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        row.hidden = box.checked && !row.dataset.change;
      });
    });
  });
})();
