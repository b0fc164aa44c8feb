// sft preview --html: filters by status, a text search and paging over the rows drawn in this page.
(function () {
  "use strict";
  var rows = Array.prototype.slice.call(document.querySelectorAll("article.row"));
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  var pageRows = parseInt(document.getElementById("toolbar").dataset.pageRows, 10) || 50;
  var search = document.getElementById("search");
  var boxes = Array.prototype.slice.call(document.querySelectorAll("input[name=status]"));
  var page = 0;

  function matching() {
    var statuses = boxes.filter(function (box) { return box.checked; }).map(function (box) { return box.value; });
    var query = search.value.trim().toLowerCase();
    return rows.filter(function (row, i) {
      return statuses.indexOf(row.dataset.status) >= 0 && (!query || texts[i].indexOf(query) >= 0);
    });
  }

  function show() {
    var shown = matching();
    var pages = Math.max(1, Math.ceil(shown.length / pageRows));
    page = Math.min(Math.max(page, 0), pages - 1);
    var first = page * pageRows, last = Math.min(shown.length, first + pageRows);
    rows.forEach(function (row) { row.hidden = true; });
    shown.slice(first, last).forEach(function (row) { row.hidden = false; });
    document.getElementById("showing").textContent = shown.length ?
      "rows " + (first + 1) + "–" + last + " of " + shown.length + " matching (page " + (page + 1) + " of " + pages + ")" :
      "no row matches";
    document.getElementById("previous").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages - 1;
  }

  function goToHash() {  // a link to #row-N opens the page that holds it
    var target = location.hash && document.getElementById(location.hash.slice(1));
    var index = matching().indexOf(target);
    if (index >= 0) { page = Math.floor(index / pageRows); show(); target.scrollIntoView(); }
  }

  boxes.forEach(function (box) { box.addEventListener("change", function () { page = 0; show(); }); });
  search.addEventListener("input", function () { page = 0; show(); });
  document.getElementById("previous").addEventListener("click", function () { page -= 1; show(); });
  document.getElementById("next").addEventListener("click", function () { page += 1; show(); });
  window.addEventListener("hashchange", goToHash);
  show();
  goToHash();
})();
