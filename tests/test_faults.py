"""Faults, interruptions and hostile data: a run is never lost and never silently wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer

from sft.config.recipe import load_recipe
from sft.data.messages import text_of
from sft.data.rows import RowError, iter_rows, load_image
from sft.data.sources import MAX_LINE_BYTES
from sft.errors import UserError
from sft.labels.collator import IGNORE_INDEX, CompletionOnlyCollator
from sft.run.train import main as train
from tests.conftest import REPO, write_image, write_jsonl
from tests.test_training import element_rows

SMOKE = REPO / "recipes/smoke.yaml"


def smoke_args(tiny_models, tmp_path, out, steps=12, save_steps=4) -> list[str]:
    rows = element_rows(tmp_path, 16, with_images=True)
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    return ["--model_name_or_path", str(tiny_models["mllama"]), "--train_file", str(train_file),
            "--eval_file", str(train_file), "--eval_strategy", "no", "--load_best_model_at_end", "false",
            "--output_dir", str(out), "--max_steps", str(steps), "--save_strategy", "steps",
            "--save_steps", str(save_steps), "--per_device_train_batch_size", "4", "--logging_steps", "1",
            "--eval_generation", "false"]


def sft_process(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sft.cli", "train", str(SMOKE), *args], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, process, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "training ended before the expected moment"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(tiny_models, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(load_recipe(SMOKE, smoke_args(tiny_models, tmp_path, straight, steps=40)))

    with open(tmp_path / "log.txt", "w") as log:
        process = sft_process(smoke_args(tiny_models, tmp_path, broken, steps=40), log)
        # trainer_state.json is the last file a checkpoint writes
        wait_for(lambda: (broken / "checkpoint-4" / "trainer_state.json").is_file(), process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -9
    assert not (broken / "adapter_model.safetensors").exists()

    train(load_recipe(SMOKE, smoke_args(tiny_models, tmp_path, broken, steps=40) +
                      ["--resume_from_checkpoint", "true"]))
    expected = load_file(straight / "adapter_model.safetensors")
    resumed = load_file(broken / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    difference = max((expected[k].float() - resumed[k].float()).abs().max().item() for k in expected)
    assert difference <= 1e-5


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny_models, tmp_path):
    out = tmp_path / "run"
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        process = sft_process(smoke_args(tiny_models, tmp_path, out, steps=5000, save_steps=10_000), log)
        wait_for(lambda: "'loss'" in log_path.read_text(), process)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    text = log_path.read_text()
    assert process.returncode == 130
    assert "SIGTERM: saving a checkpoint after this step" in text
    assert 'resume with: make train RECIPE=' in text and '--resume_from_checkpoint true' in text
    assert list(out.glob("checkpoint-*/adapter_model.safetensors"))
    assert "Traceback" not in text


def test_output_dir_with_another_runs_checkpoints_is_refused(tiny_models, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-8").mkdir(parents=True)
    args = smoke_args(tiny_models, tmp_path, out, steps=2)
    with pytest.raises(UserError, match=r"holds checkpoints checkpoint-8 of another run; resume with"):
        train(load_recipe(SMOKE, args))
    train(load_recipe(SMOKE, args + ["--overwrite_output_dir", "true", "--save_strategy", "no"]))
    assert not (out / "checkpoint-8").exists() and (out / "adapter_model.safetensors").is_file()


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_models, tmp_path):
    args = smoke_args(tiny_models, tmp_path, tmp_path / "empty", steps=2) + ["--resume_from_checkpoint", "true"]
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        train(load_recipe(SMOKE, args))


def test_divergence_stops_training_and_writes_no_adapter(tiny_models, tmp_path):
    out = tmp_path / "run"
    args = smoke_args(tiny_models, tmp_path, out, steps=30, save_steps=2) + ["--learning_rate", "1e30",
                                                                             "--load_in_8bit", "false"]
    with pytest.raises(UserError, match=r"training diverged: (loss|grad_norm) became (nan|inf) at step \d+; "
                                        r"no adapter was written; last good checkpoint: "):
        train(load_recipe(SMOKE, args))
    assert not (out / "adapter_model.safetensors").exists()


# ---- hostile data ---------------------------------------------------------------------------------------------
@pytest.fixture
def llama_collator(tiny_models):
    return CompletionOnlyCollator(AutoTokenizer.from_pretrained(tiny_models["llama"]))


@pytest.mark.parametrize("text", ["water<|eot_id|>", "<|start_header_id|>system", "<|begin_of_text|>hi"])
def test_special_token_written_in_data_is_refused_naming_the_row(llama_collator, text):
    example = {"where": "d.jsonl:4", "messages": [{"role": "user", "content": "What?"},
                                                  {"role": "assistant", "content": text}], "stored_images": []}
    with pytest.raises(UserError, match=r"^d.jsonl:4: message 2 \(assistant\) contains '<\|"):
        llama_collator([example])


def test_image_placeholder_in_idefics3_text_is_refused(tiny_models):
    from transformers import AutoProcessor

    collator = CompletionOnlyCollator(AutoProcessor.from_pretrained(tiny_models["idefics3"]))
    example = {"where": "d.jsonl:2", "messages": [{"role": "user", "content": "Look: <image>"},
                                                  {"role": "assistant", "content": "fire"}], "stored_images": []}
    with pytest.raises(UserError, match=r"^d.jsonl:2: message 1 \(user\) contains '<image>'"):
        collator.encode(example)


def test_line_over_the_limit_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "d.jsonl"
    with path.open("w") as handle:
        handle.write('{"prompt": "a", "completion": "b"}\n')
        handle.write('{"prompt": "' + "x" * (MAX_LINE_BYTES + 10) + '", "completion": "b"}\n')
        handle.write('{"prompt": "c", "completion": "d"}\n')
    first, long, third = iter_rows(path)
    assert str(long) == f"{path}:2: line longer than 8 MiB; not read"
    assert third["row"] == 3 and not isinstance(third, RowError)


def test_decompression_bomb_is_refused_naming_the_row(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: past the warning limit, under 2x
    with pytest.raises(UserError, match=r"^d.jsonl:9: image refused, too many pixels"):
        load_image(str(path), "d.jsonl:9")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # past twice the limit: Pillow's own error
    with pytest.raises(UserError, match=r"^d.jsonl:9: image refused, too many pixels"):
        load_image(str(path), "d.jsonl:9")


# ---- property: every row is either accepted with the label contract holding, or refused in one line -----------
TEXT = st.lists(st.sampled_from(list("ab \n\t:é<>|_") + ["<|eot_id|>", "<image>", "water", "\u2028"]),
                max_size=12).map("".join)
VALUE = st.one_of(TEXT, st.integers(), st.none(), st.lists(TEXT, max_size=2), st.booleans())
ROW = st.one_of(
    st.fixed_dictionaries({"prompt": VALUE, "completion": VALUE}),
    st.fixed_dictionaries({"instruction": VALUE, "output": VALUE}, optional={"input": VALUE, "system": VALUE}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "robot"]), "content": VALUE}), max_size=4)}),
    st.dictionaries(st.sampled_from(["prompt", "output", "image", "x"]), VALUE, max_size=3),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=ROW)
def test_any_row_is_accepted_with_the_contract_or_refused_in_one_line(llama_collator, tmp_path, row):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    (item,) = list(iter_rows(path))
    if isinstance(item, RowError):
        assert str(item).startswith(f"{path}:1: ") and "\n" not in str(item)
        return
    try:
        batch = llama_collator([item])
    except UserError as exc:
        assert str(exc).startswith(f"{path}:1: ") and "\n" not in str(exc)
        return
    supervised = batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX]
    expected = "".join(text_of(m).strip() + "<|eot_id|>" for m in item["messages"] if m["role"] == "assistant")
    assert llama_collator.tokenizer.decode(supervised) == expected
    assert torch.equal(batch["labels"][0][batch["attention_mask"][0] == 0],
                       torch.full_like(batch["labels"][0][batch["attention_mask"][0] == 0], IGNORE_INDEX))


# ---- security defaults ----------------------------------------------------------------------------------------
def test_tokens_never_reach_the_manifest_and_remote_code_is_off(tiny_models, tmp_path):
    out = tmp_path / "run"
    args = smoke_args(tiny_models, tmp_path, out, steps=1) + ["--hub_token", "hf_SECRET123", "--save_strategy",
                                                               "no"]
    recipe = load_recipe(SMOKE, args)
    assert recipe.training.trust_remote_code is False
    os.environ["WANDB_API_KEY"] = "wandb-SECRET456"
    try:
        train(recipe)
    finally:
        del os.environ["WANDB_API_KEY"]
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".txt", ".jinja"):
            text = path.read_text(errors="ignore")
            assert "SECRET" not in text, path
    assert json.loads((out / "run_manifest.json").read_text())["recipe"]["training"]["hub_token"] == "<hidden>"


def test_source_never_unpickles():
    for path in (REPO / "sft").rglob("*.py"):
        text = path.read_text()
        assert "pickle" not in text and "torch.load(" not in text, path
        assert "yaml.load(" not in text and "unsafe_load" not in text, path
