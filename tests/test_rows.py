"""Data rows: the three shapes, column_map, and every bad row named by file:line."""

from __future__ import annotations

import pytest

from sft.data.messages import text_of
from sft.data.rows import RowError, iter_rows
from tests.conftest import write_image, write_jsonl


def rows_of(path, **kwargs):
    return list(iter_rows(path, **kwargs))


def text(role: str, content: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": content}]}


def test_instruction_row_joins_instruction_and_input_with_a_blank_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Define the term.", "input": "rebar", "output": "A steel bar."},
        {"instruction": "Define formwork.", "input": "", "output": "A mould."},
        {"instruction": "Define beam.", "output": "A load carrier."},
    ])
    first, second, third = rows_of(path)
    assert first["messages"] == [text("user", "Define the term.\n\nrebar"), text("assistant", "A steel bar.")]
    assert text_of(second["messages"][0]) == "Define formwork."
    assert text_of(third["messages"][0]) == "Define beam."
    assert (first["row"], first["where"]) == (1, f"{path}:1")


def test_prompt_completion_and_messages_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Say hi", "completion": "hi"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                      {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                      {"role": "assistant", "content": "d"}]},
    ])
    pc, conv = rows_of(path)
    assert pc["messages"] == [text("user", "Say hi"), text("assistant", "hi")]
    assert [m["role"] for m in conv["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_column_map_renames_target_to_completion_and_images_resolve_against_the_file(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "img/a.png", "prompt": "What?", "target": "water"}])
    (row,) = rows_of(path, column_map={"completion": "target"})
    assert row["messages"][-1] == text("assistant", "water")
    assert row["messages"][0]["content"][0] == {"type": "image", "text": ""}  # images open the first user turn
    assert row["stored_images"] == [{"bytes": None, "path": str(tmp_path / "img" / "a.png")}]


def test_image_root_overrides_the_files_folder(tmp_path):
    write_image(tmp_path / "elsewhere" / "a.png")
    path = write_jsonl(tmp_path / "d.jsonl", [{"images": ["a.png"], "prompt": "What?", "completion": "x"}])
    (row,) = rows_of(path, image_root=tmp_path / "elsewhere")
    assert row["stored_images"] == [{"bytes": None, "path": str(tmp_path / "elsewhere" / "a.png")}]


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\r\n\r\n   \n'
                     b'{"prompt": "c", "completion": "d"}\r\n')
    rows = rows_of(path)
    assert [r["row"] for r in rows] == [1, 4]
    assert all(not isinstance(r, RowError) for r in rows)


BAD_ROWS = [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object (got list)"),
    ({"prompt": "a"}, '"completion" must be a non-empty string, got nothing'),
    ({"instruction": "a", "output": 3}, '"output" must be a non-empty string, got 3'),
    ({"prompt": "a", "completion": "  "}, '"completion" must be a non-empty string'),
    ({"hello": "a"}, "no known row shape"),
    ({"messages": [{"role": "user", "content": "a"}]}, "the last message must be the assistant's reply"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "message 1 needs a role"),
    ({"prompt": "a", "completion": "b", "image": "missing.png"}, "image not found"),
    ({"prompt": "a", "completion": "b", "image": "."}, "image path is a folder"),
    ({"prompt": "a", "completion": "b", "image": 5}, '"image" must be a path, {bytes, path} or a list of them'),
]


@pytest.mark.parametrize(("line", "message"), BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_bad_row_is_named_by_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "completion": "ok"}, line])
    good, bad = rows_of(path)
    assert isinstance(bad, RowError)
    assert str(bad).startswith(f"{path}:2: ")
    assert message in str(bad)
    assert "\n" not in str(bad)


def test_column_map_error_names_the_users_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "target": ""}])
    (bad,) = rows_of(path, column_map={"completion": "target"})
    assert str(bad) == f'{path}:1: "target" must be a non-empty string, got \'\''


def test_invalid_utf8_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff", "completion": "b"}\n')
    assert str(rows_of(path)[1]).startswith(f"{path}:2: not valid UTF-8")
