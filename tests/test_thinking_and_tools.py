"""Thinking and tool-call rows (TRL's conventions) on every family's real chat template: supervised exactly as the
template writes them where it does, refused in one line where it does not (tests/families/thinking.py writes out
what each template writes; tests/families/registry.py says which case thinks and calls)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sft.data.rows import RowError, iter_rows
from sft.errors import UserError
from sft.eval.generation import reference, split_reasoning
from sft.labels.labelling import make_collator
from sft.labels.template_inputs import row_context
from tests.conftest import write_image, write_jsonl
from tests.families import qwen
from tests.families.registry import BY_NAME, CASES, NO_TEMPLATES, Case, build, cases, from_spec
from tests.families.rows import supervised_text

TOOLS = [{"type": "function", "function": {"name": name, "description": f"the {what} of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}
         for name, what in (("get_weather", "weather"), ("get_time", "local time"))]
TEMPLATED = [case for case in CASES if case.template is not None]


def call(name: str, city: str, number: int) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": {"city": city}}, "id": f"callid00{number}"}


def stored(tmp_path, row: dict, images: int = 0):
    """The row as the data stage stores it (read back from a JSONL file), or its RowError."""
    if images:
        write_image(tmp_path / "img.png", size=(36, 50))
        row = {**row, "images": ["img.png"] * images}
    (item,) = list(iter_rows(write_jsonl(tmp_path / "rows.jsonl", [row])))
    return item


def supervised(case: Case, processor, item: dict, **keys) -> str:
    collator = make_collator(processor, case.family, **keys)
    return supervised_text(collator, collator([item]))


def tool_row(calls: int, image: bool) -> dict:
    made = [call("get_weather", "Paris", 1), call("get_time", "Paris", 2)][:calls]
    question = [{"type": "image"}, {"type": "text", "text": "What is it like in Paris?"}] if image else \
        "What is it like in Paris?"
    results = [{"role": "tool", "content": text, "tool_call_id": c["id"]} for c, text in zip(made, ("sunny", "noon"))]
    return {"tools": TOOLS, "messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": "", "tool_calls": made}, *results,
                                         {"role": "assistant", "content": "Sunny at noon."}]}


def tool_params() -> list:
    return [pytest.param(case, calls, image, id=f"{case.name}-{calls}call-{'image' if image else 'text'}")
            for case in TEMPLATED for calls in (1, 2) for image in sorted(set(case.images))]


@NO_TEMPLATES
@pytest.mark.parametrize(("case", "calls", "image"), tool_params())
def test_a_tool_row_supervises_its_calls_and_answer_never_the_results(family_models, tmp_path, case, calls, image):
    processor, _ = family_models.load(case)
    row = tool_row(calls, image)
    item = stored(tmp_path, row, images=int(image))
    if case.calls is None:
        with pytest.raises(UserError, match=r"rows.jsonl:1: the chat template writes no tool calls \(it never reads "
                                            r"tool_calls\); this model takes no tool-calling rows$"):
            supervised(case, processor, item)
        return
    if image and not case.tool_images:
        with pytest.raises(UserError, match=r"the chat template writes 0 of the row's 1 image\(s\)"):
            supervised(case, processor, item)
        return
    call_end = case.family.tool_call_end or case.family.closing
    made = row["messages"][1]["tool_calls"]
    expected = (case.thinking + case.calls(made) + call_end + case.thinking + "Sunny at noon." + case.family.closing)
    text = supervised(case, processor, item)
    assert text == expected
    assert "sunny" not in text and "noon" not in text.replace("Sunny at noon.", "")  # tool results: context


@NO_TEMPLATES
@pytest.mark.parametrize("case", cases(TEMPLATED))
def test_a_reasoning_row_learns_its_reasoning_as_the_template_writes_it_or_is_refused(family_models, tmp_path, case):
    processor, _ = family_models.load(case)
    rows = [{"messages": [{"role": "user", "content": "What burns?"},
                          {"role": "assistant", "content": "fire", "reasoning_content": "It is hot and red."}]},
            {"messages": [{"role": "user", "content": "What burns?"},  # the same, thinking written inline
                          {"role": "assistant", "content": "<think>\nIt is hot and red.\n</think>\n\nfire"}]}]
    for row in rows if case.thinks else rows[:1]:  # inline `<think>` is plain text to a family without thinking
        item = stored(tmp_path, row)
        if case.thinks is None:
            refused = "has no thinking mode|does not write the reasoning of assistant turn 2"
            with pytest.raises(UserError, match=refused):
                supervised(case, processor, item)
            continue
        reasoning = case.thinks.format(reasoning="It is hot and red.")
        assert supervised(case, processor, item) == reasoning + "fire" + case.family.closing


@NO_TEMPLATES
@pytest.mark.parametrize("case", cases(case for case in TEMPLATED if case.call_thinks or case.thinks))
def test_a_call_turn_with_reasoning_learns_both(family_models, tmp_path, case):
    processor, _ = family_models.load(case)
    made = [call("get_weather", "Paris", 1)]
    row = {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Paris?"},
                                        {"role": "assistant", "content": "", "tool_calls": made,
                                         "reasoning_content": "The weather tool knows."}]}
    thinks = (case.call_thinks or case.thinks).format(reasoning="The weather tool knows.")
    expected = thinks + case.calls(made) + (case.family.tool_call_end or case.family.closing)
    assert supervised(case, processor, stored(tmp_path, row)) == expected


@NO_TEMPLATES
@pytest.mark.parametrize("name", ["qwen3_5_think", "qwen3_5_nothink"])
def test_reasoning_before_the_last_user_turn_is_what_the_template_writes_and_is_counted(family_models, tmp_path,
                                                                                          name):
    case = BY_NAME[name]
    processor, _ = family_models.load(case)
    row = {"messages": [{"role": "user", "content": "q1"},
                        {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
                        {"role": "user", "content": "q2"},
                        {"role": "assistant", "content": "a2", "reasoning_content": "r2"}]}
    item = stored(tmp_path, row)
    collator = make_collator(processor, case.family)
    assert supervised_text(collator, collator([item])) == "a1<|im_end|>" + "r2\n</think>\n\na2<|im_end|>"
    assert collator.replies.rendering(item["messages"], row_context(item)).dropped_reasoning == 1


@NO_TEMPLATES
def test_the_empty_thinking_block_is_learnt_or_kept_as_context_by_the_recipe(family_models, tmp_path):
    case = BY_NAME["qwen3_5_think"]
    processor, _ = family_models.load(case)
    item = stored(tmp_path, {"messages": [{"role": "user", "content": "What burns?"},
                                          {"role": "assistant", "content": "fire"}]})
    assert supervised(case, processor, item) == "\n</think>\n\nfire<|im_end|>"
    assert supervised(case, processor, item, supervise_empty_thinking=False) == "fire<|im_end|>"
    masked = make_collator(processor, case.family, supervise_empty_thinking=False)
    assert masked.generation_prompt(item["messages"]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # Thinking off for every row (the recipe), or for one row (TRL's chat_template_kwargs): the block is prompt.
    assert supervised(case, processor, item, enable_thinking=False) == "fire<|im_end|>"
    off = stored(tmp_path, {"messages": [{"role": "user", "content": "What burns?"},
                                         {"role": "assistant", "content": "fire"}],
                            "chat_template_kwargs": {"enable_thinking": False}})
    assert supervised(case, processor, off) == "fire<|im_end|>"


@NO_TEMPLATES
def test_enable_thinking_on_a_template_that_never_reads_it_is_one_line(family_models):
    case = BY_NAME["qwen2_5_vl"]
    processor, _ = family_models.load(case)
    with pytest.raises(UserError, match="^enable_thinking is set but the chat template never reads it"):
        make_collator(processor, case.family, enable_thinking=True)


BAD_TOOL_ROWS = [
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "tool_calls": [call("get_weather", "P", 1)]}]},
     "message 2 calls 'get_weather' but the row has no \"tools\" column to declare it"),
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "q"},
                                   {"role": "assistant", "tool_calls": [call("get_moon", "P", 1)]}]},
     "message 2 calls 'get_moon', which is not in the row's tools (get_time, get_weather)"),
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]}]},
     "message 2 tool call 1 (get_weather) arguments is not JSON (Expecting property name enclosed in double quotes "
     "at character 1)"),
    ({"tools": TOOLS, "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "sunny"},
                                   {"role": "assistant", "content": "a"}]},
     "message 2 (tool) answers no call: the message before it makes none"),
    ({"tools": "[{\"name\": 3}]", "messages": [{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": "a"}]},
     "\"tools\" must be a list of function schemas, each with a \"name\" (TRL's tools column)"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "reasoning_content": "r"}]},
     "\"message 2 content\" must be a non-empty string, got ''"),  # reasoning alone is no reply
    ({"chat_template_kwargs": "[1]", "messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}]},
     "\"chat_template_kwargs\" must be a mapping of keyword to value, e.g. {\"enable_thinking\": false}"),
]


@pytest.mark.parametrize(("row", "message"), BAD_TOOL_ROWS, ids=[m[:40] for _, m in BAD_TOOL_ROWS])
def test_a_bad_tool_or_reasoning_row_is_one_line_naming_it(tmp_path, row, message):
    item = stored(tmp_path, row)
    assert isinstance(item, RowError)
    assert str(item) == f"{tmp_path / 'rows.jsonl'}:1: {message}"


@NO_TEMPLATES
def test_a_tool_message_is_named_after_its_call_for_the_template(tmp_path):
    row = tool_row(2, False)
    for message in row["messages"]:
        message.pop("tool_call_id", None)  # matched by place: result k answers call k
    names = [m["name"] for m in stored(tmp_path, row)["messages"] if m["role"] == "tool"]
    assert names == ["get_weather", "get_time"]


@NO_TEMPLATES
def test_generation_splits_reasoning_from_the_answer_and_a_call_row_is_scored_on_its_call(family_models, tmp_path):
    case = BY_NAME["qwen3_5_think"]
    processor, _ = family_models.load(case)
    collator = make_collator(processor, case.family)
    tokenizer = collator.tokenizer
    ids = tokenizer("It is hot.\n</think>\n\nfire", add_special_tokens=False)["input_ids"]
    assert split_reasoning(ids, tokenizer, case.family) == ("It is hot.", "fire")
    assert split_reasoning(tokenizer("fire")["input_ids"], tokenizer, case.family) == ("", "fire")
    row = {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Paris?"},
                                        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", "Paris",
                                                                                                  1)]}]}
    assert reference(stored(tmp_path, row), collator) == thinking_calls(case)


def thinking_calls(case: Case) -> str:
    return case.calls([call("get_weather", "Paris", 1)])


# ---- tiny models learn them ---------------------------------------------------------------------------------------
def train_rows(case: Case, model_dir, root, train_rows: list[dict], eval_rows: list[dict], epochs: int,
               max_length: int = 1024, learning_rate: float = 5e-3) -> dict:
    """A LoRA run of `model_dir` on the rows, scored by generation on `eval_rows` (exact match on the answer)."""
    from sft.config.recipe import load_recipe
    from sft.run.train import main as train
    from tests.conftest import write_recipe

    recipe = write_recipe(root / "recipe.yaml", model_name_or_path=str(model_dir),
                          train_file=str(write_jsonl(root / "train.jsonl", train_rows)),
                          eval_file=str(write_jsonl(root / "val.jsonl", eval_rows)), output_dir=str(root / "run"),
                          max_length=max_length, num_train_epochs=epochs, per_device_train_batch_size=4,
                          per_device_eval_batch_size=4, learning_rate=learning_rate, gradient_checkpointing=False,
                          eval_strategy="no", logging_steps=4, seed=0)
    return train(load_recipe(recipe))


def predictions(root) -> list[dict]:
    (path,) = sorted((root / "run" / "eval_predictions").glob("*.jsonl"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@NO_TEMPLATES
def test_a_tiny_thinking_model_learns_to_reason_then_answer(family_models, tmp_path):
    """Qwen3.5 (thinking on): each image row thinks one sentence about the colour, then names the element."""
    from tests.test_training import ELEMENTS

    case = BY_NAME["qwen3_5_think"]
    thoughts = {"water": "The picture is blue.", "fire": "The picture is red."}
    rows = []
    for index in range(12):
        label = list(ELEMENTS)[index % 2]
        write_image(tmp_path / f"{label}.png", ELEMENTS[label])
        rows.append({"images": [f"{label}.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element is shown?"}]},
            {"role": "assistant", "content": label, "reasoning_content": thoughts[label]}]})
    metrics = train_rows(case, family_models.folder(case), tmp_path, rows[:8], rows[8:], epochs=16)
    assert metrics["eval_accuracy"] >= 0.9
    for record in predictions(tmp_path):  # the answer is scored; the reasoning is kept beside it
        assert record["reasoning"] == thoughts[record["prediction"]]


@NO_TEMPLATES
def test_a_tiny_model_learns_to_call_the_right_function_with_the_right_argument(family_models, tmp_path):
    """Qwen3-VL: a question about a city's weather or time → the matching call with that city; scored on the call.
    Its tokenizer has learnt merges from calls and the tools block, as a real one has (with the tiny corpus's ~130
    merges a ~1,000-character tools block and each call are mostly single bytes, and a 2-layer model trained for a
    minute names the wrong function)."""
    case = BY_NAME["qwen3_vl"]
    asks = [("weather", "get_weather"), ("time", "get_time")]
    rows = [{"tools": TOOLS, "messages": [
        {"role": "user", "content": f"What is the {what} in {city}?"},
        {"role": "assistant", "content": "", "tool_calls": [call(name, city, 1)]}]}
        for what, name in asks for city in ("Paris", "Tokyo")]
    # The template's tools block is ~1,700 characters, and the tiny tokenizer has few merges: rows are ~2,000 tokens.
    spec = replace(qwen.SPECS["qwen3_vl"], vocab_size=1200, extra_lines=tuple(
        render_lines(case, rows)) * 20)
    model_dir = build(replace(case, build=from_spec(spec)), tmp_path / "model")
    metrics = train_rows(case, model_dir, tmp_path, rows * 3, rows, epochs=24, max_length=2048)
    assert metrics["eval_accuracy"] >= 0.9
    written = {record["reference"] for record in predictions(tmp_path)}
    assert written == {case.calls([call(name, city, 1)]) for _, name in asks for city in ("Paris", "Tokyo")}


def render_lines(case: Case, rows: list[dict]) -> list[str]:
    """The lines the template writes for `rows` (read back through the real template with the case's tokenizer)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    tokenizer.chat_template = case.chat_template()
    return [line for row in rows for line in tokenizer.apply_chat_template(
        row["messages"], tools=row["tools"], tokenize=False).splitlines() if line]


@NO_TEMPLATES
def test_check_counts_the_rows_whose_reasoning_the_template_does_not_write(family_models, tmp_path, capsys):
    from sft.cli import main
    from tests.conftest import write_recipe

    case = BY_NAME["qwen3_5_think"]
    earlier = {"messages": [{"role": "user", "content": "q1"},
                            {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
                            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}
    last = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a", "reasoning_content": "r"}]}
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder(case)),
                        train_file=str(write_jsonl(tmp_path / "train.jsonl", [earlier, last, earlier])),
                        max_length=256, output_dir=str(tmp_path / "run"))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 rows, 3 ok" in out
    assert "; 2 row(s) with reasoning the chat template does not write (replies before the last user turn" in out


@NO_TEMPLATES
@pytest.mark.parametrize("case", cases(case for case in TEMPLATED if case.calls and case.vision))
def test_a_tool_result_with_an_image_is_context_where_the_template_writes_it(family_models, tmp_path, case):
    processor, _ = family_models.load(case)
    row = tool_row(1, False)
    row["messages"][2]["content"] = [{"type": "image"}, {"type": "text", "text": "a map of Paris"}]
    item = stored(tmp_path, row, images=1)
    if not case.tool_result_images:
        with pytest.raises(UserError, match=r"the chat template writes 0 of the row's 1 image\(s\)"):
            supervised(case, processor, item)
        return
    made = row["messages"][1]["tool_calls"]
    call_end = case.family.tool_call_end or case.family.closing
    assert supervised(case, processor, item) == (case.thinking + case.calls(made) + call_end + case.thinking
                                                 + "Sunny at noon." + case.family.closing)


@NO_TEMPLATES
def test_the_data_page_colours_reasoning_calls_and_tool_results_apart(family_models, tmp_path):
    """`sft preview --html` on a Qwen3.5 tool row with reasoning, read back from a real Chromium."""
    from sft.cli import main
    from tests.browser import Browser, find_chromium
    from tests.conftest import write_recipe

    case = BY_NAME["qwen3_5_think"]
    row = tool_row(1, False)
    row["messages"][1]["reasoning_content"] = "The weather tool knows."
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder(case)),
                        train_file=str(write_jsonl(tmp_path / "train.jsonl", [row])), max_length=4096,
                        output_dir=str(tmp_path / "run"))
    assert main(["preview", str(path), "--html", str(tmp_path / "page.html")]) == 0
    browser = Browser(find_chromium())
    try:
        browser.open((tmp_path / "page.html").as_uri())
        texts = "kind => Array.from(document.querySelectorAll('article.row ' + kind), m => m.textContent).join('|')"
        shown = {kind: browser.evaluate(f"({texts})({json.dumps(kind)})")
                 for kind in ("mark.sup.reasoning", "mark.sup.call", ".ctx.tool_result")}
        legend = browser.evaluate("document.querySelector('td.kinds').textContent")
        assert browser.console_errors() == []
    finally:
        browser.close()
    assert shown == {"mark.sup.reasoning": "The weather tool knows.\n</think>\n\n|\n</think>\n\n",
                     "mark.sup.call": case.calls(row["messages"][1]["tool_calls"]), ".ctx.tool_result": "sunny"}
    assert "tool result (context, never supervised)" in legend


@NO_TEMPLATES
def test_the_terminal_preview_colours_reasoning_calls_and_tool_results(family_models, tmp_path, capsys):
    from sft.check.inspect_data import KIND_COLOURS, preview
    from sft.config.recipe import load_recipe
    from sft.model.processing import open_processing
    from tests.conftest import write_recipe

    case = BY_NAME["qwen3_5_think"]
    row = tool_row(1, False)
    row["messages"][1]["reasoning_content"] = "The weather tool knows."
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder(case)),
                                      train_file=str(write_jsonl(tmp_path / "train.jsonl", [row])), max_length=4096,
                                      output_dir=str(tmp_path / "run")))
    assert preview(recipe, open_processing(recipe).collator, limit=1, as_json=False, colour=True) == 0
    out = capsys.readouterr().out
    for kind, text in (("reasoning", "weather tool"), ("call", "get_weather"), ("tool_result", "sunny")):
        coloured = "".join(piece.split("\033[0m")[0] for piece in out.split(KIND_COLOURS[kind])[1:])
        assert text in coloured, kind
