"""Each generation metric on known strings, checked against the library that defines it (sacrebleu, rouge-score)."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from sft.errors import UserError
from sft.eval.metrics import (
    RougeTokenizer,
    bleu_tokenizer,
    check_metric_for_best_model,
    default_metrics,
    metric_names,
    score,
)
from sft.eval.predictions import markdown_table, prompt_preview
from sft.outputs.manifest import eval_metric_points

ENGLISH_PREDICTIONS = ["Rebar is a steel bar.", "Formwork is a mould for concrete.", "A footing spreads load."]
ENGLISH_REFERENCES = ["Rebar is a steel bar used to reinforce concrete.", "Formwork is a temporary mould for concrete.",
                      "A footing spreads load."]
KOREAN_PREDICTIONS = ["철근은 강철", "거푸집은 콘크리트를 붓는 틀이다"]
KOREAN_REFERENCES = ["철근은 콘크리트", "거푸집은 콘크리트를 붓는 임시 틀이다"]


class WhitespaceTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


def test_exact_match_compares_stripped_strings_and_is_also_reported_as_accuracy():
    scores = score(["exact_match"], ["water", " fire\n", "earth"], ["water", "fire", "wind"])
    assert scores.overall == {"exact_match": pytest.approx(2 / 3), "accuracy": pytest.approx(2 / 3)}
    assert [row["exact_match"] for row in scores.per_row] == [1.0, 1.0, 0.0]


def test_bleu_equals_sacrebleu_corpus_and_sentence_scores_on_english():
    scores = score(["bleu"], ENGLISH_PREDICTIONS, ENGLISH_REFERENCES)
    assert scores.overall["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ENGLISH_PREDICTIONS,
                                                                         [ENGLISH_REFERENCES]).score)
    assert 0 < scores.overall["bleu"] < 100
    # sacrebleu.sentence_bleu uses effective order, as sacrebleu recommends for single sentences.
    assert [row["bleu"] for row in scores.per_row] == pytest.approx(
        [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(ENGLISH_PREDICTIONS, ENGLISH_REFERENCES)])
    assert scores.per_row[2]["bleu"] == pytest.approx(100.0)


def test_bleu_on_korean_uses_sacrebleus_character_tokenizer():
    assert bleu_tokenizer(ENGLISH_REFERENCES) == "13a" and bleu_tokenizer(KOREAN_REFERENCES) == "char"
    scores = score(["bleu"], KOREAN_PREDICTIONS, KOREAN_REFERENCES)
    expected = sacrebleu.corpus_bleu(KOREAN_PREDICTIONS, [KOREAN_REFERENCES], tokenize="char").score
    assert scores.overall["bleu"] == pytest.approx(expected)
    # Word-level 13a would see "철근은 강철" and "철근은 콘크리트" as sharing no bigram at all.
    assert scores.overall["bleu"] > sacrebleu.corpus_bleu(KOREAN_PREDICTIONS, [KOREAN_REFERENCES]).score


def test_chrf_equals_sacrebleu_on_english_and_korean():
    for predictions, references in ((ENGLISH_PREDICTIONS, ENGLISH_REFERENCES), (KOREAN_PREDICTIONS, KOREAN_REFERENCES)):
        scores = score(["chrf"], predictions, references)
        assert scores.overall["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
        assert [row["chrf"] for row in scores.per_row] == pytest.approx(
            [sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references)])
    assert score(["chrf"], ["철근은 강철 막대이다"], ["철근은 강철 막대이다"]).overall["chrf"] == pytest.approx(100.0)


@pytest.mark.parametrize(("name", "rouge_type"), [("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")])
def test_rouge_on_english_equals_rouge_scores_default_tokenizer(name, rouge_type):
    scorer = RougeScorer([rouge_type])  # the library's default tokenizer, no stemming
    expected = [scorer.score(r, p)[rouge_type].fmeasure for p, r in zip(ENGLISH_PREDICTIONS, ENGLISH_REFERENCES)]
    scores = score([name], ENGLISH_PREDICTIONS, ENGLISH_REFERENCES)
    assert [row[name] for row in scores.per_row] == pytest.approx(expected)
    assert scores.overall[name] == pytest.approx(sum(expected) / len(expected))


def test_rouge_on_korean_scores_syllables_where_the_default_tokenizer_scores_zero():
    # rouge-score's default tokenizer keeps only [a-z0-9]: identical Korean strings score 0.
    assert RougeScorer(["rougeL"]).score("철근은 콘크리트", "철근은 콘크리트")["rougeL"].fmeasure == 0.0
    assert RougeTokenizer().tokenize("철근은 Rebar_2") == ["철", "근", "은", "rebar", "2"]
    scores = score(["rouge_1", "rouge_2", "rouge_l"], KOREAN_PREDICTIONS[:1], KOREAN_REFERENCES[:1])
    # prediction 철 근 은 강 철, reference 철 근 은 콘 크 리 트: 3 shared syllables in order (P 3/5, R 3/7),
    # 2 shared bigrams of 4 and 6.
    assert scores.overall["rouge_1"] == pytest.approx(0.5)
    assert scores.overall["rouge_l"] == pytest.approx(0.5)
    assert scores.overall["rouge_2"] == pytest.approx(0.4)
    # The same numbers from rouge-score itself, fed the syllables split by spaces.
    spaced = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=WhitespaceTokenizer()).score(
        " ".join("철근은콘크리트"), " ".join("철근은강철"))
    assert [spaced[t].fmeasure for t in ("rouge1", "rouge2", "rougeL")] == pytest.approx([0.5, 0.4, 0.5])
    assert score(["rouge_l"], ["거푸집은 틀이다"], ["거푸집은 틀이다"]).overall["rouge_l"] == 1.0


def test_default_metrics_fit_the_references():
    assert default_metrics(["water", "fire", "earth"])[0] == ["exact_match"]
    assert default_metrics(["물", "불"])[0] == ["exact_match"]
    assert default_metrics(["water", ENGLISH_REFERENCES[0]])[0] == ["rouge_l", "chrf"]
    assert default_metrics(["거푸집은 콘크리트를 굳을 때까지 붓는 임시 틀이다"])[0] == ["rouge_l", "chrf"]
    assert default_metrics(["line one\nline two"])[0] == ["rouge_l", "chrf"]


def test_metric_names_accept_a_list_or_commas_and_name_an_unknown_one():
    assert metric_names("rouge_l, chrf") == ["rouge_l", "chrf"]
    assert metric_names(["bleu"]) == ["bleu"]
    assert metric_names(["rouge_l,chrf", "bleu"]) == ["rouge_l", "chrf", "bleu"]
    with pytest.raises(UserError, match=r"eval_metrics: unknown metric 'rougeL' \(did you mean 'rouge_l'\?\)"):
        metric_names(["rougeL"])


def test_metric_for_best_model_must_be_one_the_evaluation_reports():
    for name in ("loss", "eval_loss", "accuracy", "exact_match", "eval_accuracy"):
        check_metric_for_best_model(name, ["exact_match"])
    check_metric_for_best_model("rouge_l", ["rouge_l", "chrf"])
    check_metric_for_best_model(None, [])
    with pytest.raises(UserError, match=r"'rouge_l' is not reported .* \(it reports loss, exact_match, accuracy\)"):
        check_metric_for_best_model("rouge_l", ["exact_match"])
    with pytest.raises(UserError, match=r"'accuracy' is not reported"):
        check_metric_for_best_model("accuracy", ["rouge_l"])


def test_prompt_preview_keeps_the_end_on_one_line():
    assert prompt_preview("system\n\nBe brief.\nuser\n\nDefine rebar.") == "system Be brief. user Define rebar."
    long = "x" * 300 + " Define rebar."
    assert prompt_preview(long, limit=20) == "…" + long[-20:]


def test_markdown_table_escapes_cells():
    table = markdown_table([{"row": 3, "prompt": "a|b", "prediction": "p\nq", "reference": None,
                             "scores": {"rouge_l": 0.5}}])
    assert table.splitlines()[2] == "| 3 | a\\|b | p q |  | rouge_l 0.5 |"


def test_the_curves_show_the_generation_metrics_once_each():
    history = [{"loss": 1.0, "step": 1}, {"eval_loss": 0.9, "eval_rouge_l": 0.2, "eval_runtime": 1.0, "step": 2},
               {"eval_loss": 0.8, "eval_rouge_l": 0.4, "eval_chrf": 30.0, "eval_num_tokens": 700, "step": 4},
               {"eval_exact_match": 0.5, "eval_accuracy": 0.5, "step": 4}]
    assert eval_metric_points(history) == {"eval_exact_match": [(4, 0.5)], "eval_chrf": [(4, 30.0)],
                                           "eval_rouge_l": [(2, 0.2), (4, 0.4)]}
