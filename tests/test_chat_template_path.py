"""`chat_template_path`: one template file, read when the processor loads, renders the labels, the preview, the
generation prompt and the saved run alike (sft/family/chat_template.py); anything else is refused in one line."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from transformers import AutoTokenizer
from trl import ModelConfig

from sft.check.inspect_data import preview
from sft.cli import main
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.eval.generation import generate
from sft.labels.collator import IGNORE_INDEX
from sft.labels.labelling import make_collator
from sft.model.loading import load_processor_and_family
from sft.model.tiny import LLAMA_TEMPLATE
from sft.outputs.export import export_adapter, merge
from sft.outputs.predict import load_for_inference
from sft.run.train import main as train
from tests.conftest import write_jsonl, write_recipe
from tests.test_training import recipe_for

# The tiny Llama's own template with a system turn written before every conversation.
SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
CUSTOM_TEMPLATE = LLAMA_TEMPLATE.replace("{{ bos_token }}", "{{ bos_token }}" + SYSTEM, 1)
MESSAGES = [{"role": "user", "content": "What element is shown?"}, {"role": "assistant", "content": "water"}]
# What follows the system turn up to the reply, as the tiny Llama's template writes it.
PROMPT = ("<|start_header_id|>user<|end_header_id|>\n\nWhat element is shown?<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.fixture
def template_file(tmp_path):
    path = tmp_path / "custom.jinja"
    path.write_text(CUSTOM_TEMPLATE, encoding="utf-8")
    return path


def collator_for(model_dir, chat_template_path=None):
    processing_class, family = load_processor_and_family(ModelConfig(model_name_or_path=str(model_dir)),
                                                         chat_template_path=chat_template_path)
    return make_collator(processing_class, family, max_length=64)


def supervised_text(collator, encoded) -> str:
    return collator.tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels)
                                      if label != IGNORE_INDEX])


@pytest.mark.parametrize("family", ["llama", "mllama"])
def test_the_template_file_renders_the_labels(tiny_models, template_file, family):
    own = collator_for(tiny_models[family])
    custom = collator_for(tiny_models[family], str(template_file))
    assert custom.processing_class.chat_template == custom.tokenizer.chat_template == CUSTOM_TEMPLATE
    own_row, custom_row = own.encode({"messages": MESSAGES}), custom.encode({"messages": MESSAGES})
    assert SYSTEM not in own_row.text
    assert custom_row.text == own_row.text.replace("<|begin_of_text|>", "<|begin_of_text|>" + SYSTEM, 1)
    system_ids = custom.tokenizer(SYSTEM, add_special_tokens=False)["input_ids"]
    assert custom_row.input_ids == own_row.input_ids[:1] + system_ids + own_row.input_ids[1:]
    assert custom_row.labels == own_row.labels[:1] + [IGNORE_INDEX] * len(system_ids) + own_row.labels[1:]
    assert custom_row.prompt_tokens == own_row.prompt_tokens + len(system_ids)
    assert supervised_text(own, own_row) == supervised_text(custom, custom_row) == "water<|eot_id|>"


def test_preview_shows_the_template_file(tiny_models, template_file, tmp_path, capsys):
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "What element is shown?", "completion": "water"}])
    keys = dict(model_name_or_path=str(tiny_models["llama"]), train_file=str(train_file), max_length=64,
                output_dir=str(tmp_path / "run"))
    recipes = {"own": write_recipe(tmp_path / "own.yaml", **keys),
               "custom": write_recipe(tmp_path / "custom.yaml", **keys, chat_template_path=str(template_file))}
    records = {}
    for name, path in recipes.items():
        assert main(["preview", str(path), "--json"]) == 0
        records[name] = json.loads(capsys.readouterr().out.splitlines()[0])
    system_tokens = len(AutoTokenizer.from_pretrained(tiny_models["llama"])(SYSTEM, add_special_tokens=False)
                        ["input_ids"])
    assert records["custom"]["prompt_tokens"] == records["own"]["prompt_tokens"] + system_tokens
    assert records["custom"]["supervised_text"] == records["own"]["supervised_text"] == "water<|eot_id|>"

    recipe = load_recipe(recipes["custom"])
    assert preview(recipe, collator_for(tiny_models["llama"], recipe.training.chat_template_path), 1, False,
                   colour=True) == 0
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).split("\n", 1)[1]  # every token, uncoloured
    assert shown == f"<|begin_of_text|>{SYSTEM}{PROMPT}water<|eot_id|>\n"


def test_a_model_without_a_template_trains_and_its_run_keeps_the_file(tiny_models, template_file, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_models["llama"], bare)
    (bare / "chat_template.jinja").unlink()
    assert AutoTokenizer.from_pretrained(bare).chat_template is None
    with pytest.raises(UserError, match="has no chat template"):
        collator_for(bare)

    train(load_recipe(recipe_for(tmp_path, bare, False, num_train_epochs=1, chat_template_path=str(template_file))))
    run = tmp_path / "run"
    assert (run / "chat_template.jinja").read_text(encoding="utf-8") == CUSTOM_TEMPLATE
    manifest = json.loads((run / "run_manifest.json").read_text(encoding="utf-8"))
    assert manifest["recipe"]["training"]["chat_template_path"] == str(template_file)

    # What `sft predict` does with the run: its saved processor, the collator's generation prompt.
    model, processing_class, date_string, family = load_for_inference(run)
    collator = make_collator(processing_class, family, date_string=date_string)
    assert collator.generation_prompt(MESSAGES) == f"<|begin_of_text|>{SYSTEM}{PROMPT}"
    [generated] = generate(model, collator, [{"messages": MESSAGES}], max_new_tokens=2)
    assert generated.prompt == "system You are a helpful assistant. user What element is shown? assistant"

    for folder in (export_adapter(run, tmp_path / "export"), merge(run, tmp_path / "merged", dtype="fp32")):
        assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == CUSTOM_TEMPLATE
    assert load_for_inference(tmp_path / "merged")[1].chat_template == CUSTOM_TEMPLATE


@pytest.mark.parametrize(("given", "refusal"), [
    ("missing.jinja", "chat_template_path '{tmp}/missing.jinja': no such file"),
    ("bad.jinja", "chat_template_path {tmp}/bad.jinja: not valid Jinja (line 2: unexpected '}}')"),
    ("empty.jinja", "chat_template_path '{tmp}/empty.jinja': the file is empty"),
    ("meta-llama/Llama-3.2-1B-Instruct", "chat_template_path 'meta-llama/Llama-3.2-1B-Instruct': not a .jinja or .j2 "
     "file; give a chat template file (.jinja or .j2). TRL's other form (a tokenizer folder or Hub id, whose tokens "
     "it adds and whose embeddings it resizes) is not supported"),
    ("tokenizer_config.json", "chat_template_path '{tmp}/tokenizer_config.json': not a .jinja or .j2 file; give a "
     "chat template file (.jinja or .j2). TRL's other form (a tokenizer folder or Hub id, whose tokens it adds and "
     "whose embeddings it resizes) is not supported"),
    ("folder", "chat_template_path '{tmp}/folder': a folder (its template file: {tmp}/folder/chat_template.jinja); "
     "give a chat template file (.jinja or .j2). TRL's other form (a tokenizer folder or Hub id, whose tokens it adds "
     "and whose embeddings it resizes) is not supported"),
])
def test_anything_but_a_valid_template_file_is_refused_in_one_line(tiny_models, tmp_path, capsys, given, refusal):
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}\n{{ m.role }\n{% endfor %}\n", encoding="utf-8")
    (tmp_path / "empty.jinja").write_text("\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CUSTOM_TEMPLATE}), encoding="utf-8")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "chat_template.jinja").write_text(CUSTOM_TEMPLATE, encoding="utf-8")
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "What element is shown?", "completion": "water"}])
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_models["llama"]),
                        train_file=str(train_file), output_dir=str(tmp_path / "run"),
                        chat_template_path=given if "/" in given else str(tmp_path / given))
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {refusal.format(tmp=tmp_path)}\n"
    assert main(["train", str(path)]) == 2  # refused before any weights load or the run folder is made
    assert capsys.readouterr().err.endswith(f"error: {refusal.format(tmp=tmp_path)}\n")
    assert not (tmp_path / "run").exists()


def test_a_family_labelled_without_a_template_refuses_it(family_models, template_file):
    with pytest.raises(UserError, match=r"^chat_template_path: the paligemma family takes prompt and answer through "
                                        r"its processor's own call, not a chat template; remove chat_template_path$"):
        collator_for(family_models.folder("paligemma"), str(template_file))
