"""Evaluation on free text with the tiny text model: the held-out split, prediction files per evaluation, early
stopping on a text metric, and `sft predict` reporting the run's metrics on the same rows."""

from __future__ import annotations

import json

import pytest

from sft.cli import main as sft
from sft.config.recipe import load_recipe
from sft.data.arrow_rows import load_rows
from sft.data.eval_split import held_out_positions, split_rows
from sft.errors import UserError
from sft.eval.metrics import score
from sft.outputs.predict import default_data, held_out_rows, predict
from sft.run.train import main as train
from tests.conftest import REPO, write_jsonl, write_recipe

TERMS = [
    ("rebar", "Rebar is a steel bar used to reinforce concrete."),
    ("formwork", "Formwork is a temporary mould for concrete."),
    ("scaffolding", "Scaffolding is a temporary structure."),
    ("footing", "A footing spreads load."),
    ("beam", "A beam carries load."),
    ("철근", "철근은 콘크리트를 보강하는 강철 막대이다."),
]


def term_rows(count: int) -> list[dict]:
    return [{"instruction": "Define the construction term.", "input": TERMS[i % len(TERMS)][0],
             "output": TERMS[i % len(TERMS)][1]} for i in range(count)]


def text_recipe(tmp_path, model_dir, **extra):
    train_file = write_jsonl(tmp_path / "terms.jsonl", term_rows(12))
    keys = dict(model_name_or_path=str(model_dir), train_file=str(train_file), output_dir=str(tmp_path / "run"),
                max_length=128, num_train_epochs=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                learning_rate=3e-3, gradient_checkpointing=False, logging_steps=1, seed=0, eval_split_size=4) | extra
    return write_recipe(tmp_path / "recipe.yaml", **keys)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_split_size_holds_out_the_same_rows_on_every_run(tmp_path):
    path = write_jsonl(tmp_path / "terms.jsonl", term_rows(12))
    first_train, first_eval, record = split_rows(load_rows(path), 0.25, 42, str(path))
    again_train, again_eval, _ = split_rows(load_rows(path), 0.25, 42, str(path))
    assert record["row_numbers"] == list(first_eval["row"]) == list(again_eval["row"]) == [1, 2, 12]
    assert list(first_train["row"]) == list(again_train["row"])
    assert sorted([*first_train["row"], *first_eval["row"]]) == list(range(1, 13))
    assert record | {"row_numbers": None} == {"from": str(path), "eval_split_size": 0.25, "eval_split_seed": 42,
                                               "eval_rows": 3, "train_rows": 9, "row_numbers": None}
    assert held_out_positions(12, 3, seed=7) != held_out_positions(12, 3, seed=42)
    assert split_rows(load_rows(path), 5, 42, str(path))[2]["eval_rows"] == 5  # a number of rows
    with pytest.raises(UserError, match=r"terms.jsonl: eval_split_size 12 holds out 12 of 12 rows, leaving none"):
        split_rows(load_rows(path), 12, 42, str(path))


def test_eval_split_size_is_refused_beside_eval_file_and_turns_on_evaluation(tmp_path, tiny_models):
    recipe = load_recipe(text_recipe(tmp_path, tiny_models["llama"]))
    assert recipe.training.eval_strategy == "epoch" and recipe.training.load_best_model_at_end
    with pytest.raises(UserError, match="eval_split_size is set with eval_file or dataset_test_split"):
        load_recipe(text_recipe(tmp_path, tiny_models["llama"], eval_file=str(tmp_path / "terms.jsonl")))


def test_each_evaluation_writes_its_predictions_and_predict_reports_the_same_metrics(tiny_models, tmp_path, capfd):
    metrics = train(load_recipe(text_recipe(tmp_path, tiny_models["llama"])))
    run = tmp_path / "run"
    manifest = json.loads((run / "run_manifest.json").read_text())
    evaluation = manifest["evaluation"]
    # Sentences: ROUGE-L and chrF chosen from the data, said in the log and the manifest.
    assert evaluation["metrics"] == ["rouge_l", "chrf"] and "chosen from the data" in evaluation["why"]
    assert evaluation["split"]["row_numbers"] == [1, 2, 7, 12] and manifest["rows"]["eval"] == {"ok": 4}
    log = capfd.readouterr().err
    assert "eval metrics: rouge_l, chrf (chosen from the data" in log
    assert "eval predictions: 4 rows in" in log

    # 8 training rows, batch 4: an evaluation after steps 2 and 4, then the final one of the saved model.
    files = sorted(p.name for p in (run / "eval_predictions").iterdir())
    assert files == ["final.jsonl", "step-2.jsonl", "step-4.jsonl"]
    history = {e["step"]: e for e in json.loads((run / "trainer_state.json").read_text())["log_history"]
               if "eval_rouge_l" in e}
    for step in (2, 4):
        records = read_jsonl(run / "eval_predictions" / f"step-{step}.jsonl")
        assert [r["row"] for r in records] == [1, 2, 7, 12]
        assert [r["reference"] for r in records] == [term_rows(12)[n - 1]["output"] for n in (1, 2, 7, 12)]
        terms = [term_rows(12)[r["row"] - 1]["input"] for r in records]
        assert [r["prompt"] for r in records] == [f"user Define the construction term. {t} assistant" for t in terms]
        recomputed = score(["rouge_l", "chrf"], [r["prediction"] for r in records], [r["reference"] for r in records])
        assert [r["scores"] for r in records] == recomputed.per_row
        assert history[step]["eval_rouge_l"] == pytest.approx(recomputed.overall["rouge_l"])
        assert history[step]["eval_chrf"] == pytest.approx(recomputed.overall["chrf"])
    final = read_jsonl(run / "eval_predictions" / "final.jsonl")
    assert metrics["eval_rouge_l"] == pytest.approx(sum(r["scores"]["rouge_l"] for r in final) / 4)
    assert (run / "loss_curve.png").stat().st_size > 0

    # `sft predict` with no data: the held-out rows of train_file, scored with the run's metrics.
    data, image_root, column_map = default_data(run)
    assert data == str(tmp_path / "terms.jsonl") and held_out_rows(run) == [1, 2, 7, 12]
    result = predict(run, data, tmp_path / "preds.jsonl", batch_size=4, rows=held_out_rows(run))
    assert result["metrics_why"] == "the run's eval metrics" and result["scored"] == 4
    assert result["predictions"] == [r["prediction"] for r in final]
    assert result["metrics"] == pytest.approx({"rouge_l": metrics["eval_rouge_l"], "chrf": metrics["eval_chrf"]})
    capfd.readouterr()
    assert sft(["predict", str(run), "--out", str(tmp_path / "cli.jsonl"), "--batch-size", "4"]) == 0
    printed = capfd.readouterr().out
    assert f"rouge_l {metrics['eval_rouge_l']:.4g}, chrf {metrics['eval_chrf']:.4g} on 4 rows (the run's eval " \
           f"metrics) of {data} (the rows held out for eval)" in printed


def test_early_stopping_on_a_text_metric(tiny_models, tmp_path):
    # learning_rate 0: the replies never change, so eval_rouge_l never improves on the first evaluation and
    # patience 2 stops the run at step 3 of 12. Without eval_rouge_l reaching the callback it would run all 12.
    recipe = load_recipe(text_recipe(
        tmp_path, tiny_models["llama"], learning_rate=0.0, max_steps=12, eval_strategy="steps", eval_steps=1,
        save_strategy="steps", save_steps=1, load_best_model_at_end=True, metric_for_best_model="rouge_l",
        early_stopping_patience=2, eval_metrics=["rouge_l"]))
    metrics = train(recipe)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    evals = [e for e in state["log_history"] if "eval_rouge_l" in e]
    assert [e["step"] for e in evals] == [1, 2, 3, 3]  # three during training, then the final one
    assert state["best_metric"] == evals[0]["eval_rouge_l"] == metrics["eval_rouge_l"]
    assert state["best_model_checkpoint"].endswith("checkpoint-1")


def test_a_best_model_metric_the_evaluation_does_not_report_is_refused_before_training(tiny_models, tmp_path):
    recipe = load_recipe(text_recipe(tmp_path, tiny_models["llama"], metric_for_best_model="accuracy"))
    with pytest.raises(UserError, match=r"metric_for_best_model: 'accuracy' is not reported .* rouge_l, chrf"):
        train(recipe)
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_the_construction_recipe_is_evaluated_on_a_held_out_split_by_rouge_l():
    recipe = load_recipe(REPO / "recipes/llama11b_construction.yaml")
    assert (recipe.data.eval_split_size, recipe.data.eval_split_seed) == (0.05, 42)
    assert recipe.data.eval_metrics == ["rouge_l", "chrf", "bleu"] and recipe.data.eval_file is None
    assert recipe.training.eval_strategy == "epoch" and recipe.training.load_best_model_at_end
    assert recipe.training.metric_for_best_model == "rouge_l" and recipe.training.greater_is_better
