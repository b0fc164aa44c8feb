"""Generation metrics: exact match for short answers, BLEU / chrF (sacrebleu) and ROUGE (rouge-score) for free text.

Each metric scores the whole eval set (the number Trainer logs as `eval_<name>`, usable as `metric_for_best_model`)
and each row (written beside the run with the predictions). Scales are the libraries' own: exact match and ROUGE
lie in [0, 1], BLEU and chrF in [0, 100]. Every metric is better when higher.

Non-English text (the data is Korean as often as English) is tokenized the way the libraries document for it:
- chrF works on characters and needs no tokenizer.
- BLEU uses sacrebleu's `13a` (its default, what WMT reports) unless the references are written in Hangul, Han or
  Kana, where words are not split by spaces the way BLEU assumes; then sacrebleu's language-agnostic `char`
  tokenizer (its `ko-mecab`/`ja-mecab` need a morphological analyser this toolkit does not install).
- rouge-score's default tokenizer keeps only `[a-z0-9]`, so Korean scores 0 whatever the prediction (rouge-score
  README; huggingface/evaluate#256). `RougeTokenizer` keeps every letter and digit, and splits Hangul, Han and Kana
  into single characters; on ASCII text it gives exactly the default tokenizer's tokens.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from sft.errors import UserError

# name -> what it is; the recipe's `eval_metrics` takes these names.
METRICS = {
    "exact_match": "share of predictions equal to the reference (surrounding whitespace ignored)",
    "bleu": "sacreBLEU corpus BLEU-4",
    "chrf": "sacreBLEU chrF (character 6-grams, beta 2)",
    "rouge_1": "ROUGE-1 F1, mean over rows",
    "rouge_2": "ROUGE-2 F1, mean over rows",
    "rouge_l": "ROUGE-L F1, mean over rows",
}
# exact_match is also reported as `accuracy`, the name recipes and `make smoke` have used since the first release.
ALIASES = {"exact_match": "accuracy"}
ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
SHORT_ANSWER_WORDS, SHORT_ANSWER_CHARS = 4, 30

# Scripts written without spaces between words (Han, Kana) or with spaces between whole inflected words (Hangul).
SYLLABIC = r"\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
SYLLABIC_RE = re.compile(f"[{SYLLABIC}]")
TOKEN_RE = re.compile(f"[{SYLLABIC}]|[^\\W_{SYLLABIC}]+")


class RougeTokenizer:
    """rouge-score tokenizer for any script: lowercased runs of letters and digits, one token per Hangul/Han/Kana
    character. On ASCII text it equals rouge-score's DefaultTokenizer (no stemming)."""

    def tokenize(self, text: str) -> list[str]:
        return TOKEN_RE.findall(text.lower())


def metric_names(value: str | list[str]) -> list[str]:
    """Metric names from a list or comma-separated strings (`--eval_metrics rouge_l,chrf`), each checked."""
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in str(item).split(",")]
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(str(name), list(METRICS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"eval_metrics: unknown metric {name!r}{hint}; choose from {', '.join(METRICS)}")
    return [n for n in names if n]


def bleu_tokenizer(references: list[str]) -> str:
    """sacrebleu tokenizer for these references: `char` when any is written in Hangul/Han/Kana, else `13a`."""
    return "char" if any(SYLLABIC_RE.search(ref) for ref in references) else "13a"


def is_short_answer(text: str) -> bool:
    """One line, a few words: a label-like answer that exact match judges fairly."""
    text = text.strip()
    return "\n" not in text and len(text.split()) <= SHORT_ANSWER_WORDS and len(text) <= SHORT_ANSWER_CHARS


def default_metrics(references: list[str]) -> tuple[list[str], str]:
    """The metrics that fit these references, and why (for the log)."""
    if references and all(is_short_answer(ref) for ref in references):
        return ["exact_match"], (f"every reference is one line of at most {SHORT_ANSWER_WORDS} words and "
                                 f"{SHORT_ANSWER_CHARS} characters")
    long = sum(not is_short_answer(ref) for ref in references)
    return ["rouge_l", "chrf"], f"{long} of {len(references)} references are longer than a short answer"


def reported_names(metrics: list[str]) -> list[str]:
    """The metric keys an evaluation reports for `metrics` (without Trainer's `eval_` prefix), aliases included."""
    return [key for name in metrics for key in (name, ALIASES.get(name)) if key]


@dataclass
class Scores:
    """Scores of one evaluation: over the whole set, and per row."""

    overall: dict[str, float] = field(default_factory=dict)
    per_row: list[dict[str, float]] = field(default_factory=list)


def score(metrics: list[str], predictions: list[str], references: list[str]) -> Scores:
    """Each of `metrics` over all rows and per row; predictions and references are paired by position."""
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}")
    per_row: list[dict[str, float]] = [{} for _ in references]
    overall: dict[str, float] = {}
    if not references:
        return Scores(overall, per_row)
    predictions = [p.strip() for p in predictions]
    references = [r.strip() for r in references]
    for name in metrics:
        if name == "exact_match":
            values = [float(p == r) for p, r in zip(predictions, references)]
            overall[name] = sum(values) / len(values)
        elif name in ROUGE_TYPES:
            values = _rouge(ROUGE_TYPES[name], predictions, references)
            overall[name] = sum(values) / len(values)
        else:
            overall[name], values = _sacrebleu(name, predictions, references)
        for row, value in zip(per_row, values):
            row[name] = value
        if name in ALIASES:
            overall[ALIASES[name]] = overall[name]
    return Scores(overall, per_row)


def _rouge(rouge_type: str, predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer([rouge_type], tokenizer=RougeTokenizer())
    # rouge-score's argument order is (target, prediction).
    return [scorer.score(ref, pred)[rouge_type].fmeasure for pred, ref in zip(predictions, references)]


def _sacrebleu(name: str, predictions: list[str], references: list[str]) -> tuple[float, list[float]]:
    """Corpus score (sacrebleu's recommended number) and sentence scores for the rows."""
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        tokenize = bleu_tokenizer(references)
        corpus_metric, sentence_metric = BLEU(tokenize=tokenize), BLEU(tokenize=tokenize, effective_order=True)
    else:
        corpus_metric = sentence_metric = CHRF()
    corpus = corpus_metric.corpus_score(predictions, [references]).score
    rows = [sentence_metric.sentence_score(pred, [ref]).score for pred, ref in zip(predictions, references)]
    return corpus, rows


def check_metric_for_best_model(metric_for_best_model: str | None, metrics: list[str]) -> None:
    """Refuse, before any weights load, a `metric_for_best_model` that no evaluation will report (Trainer would
    raise a KeyError at the first evaluation, an epoch into the run)."""
    if metric_for_best_model is None:
        return
    name = metric_for_best_model.removeprefix("eval_")
    reported = ["loss", *reported_names(metrics)]
    if name not in reported:
        raise UserError(f"metric_for_best_model: {metric_for_best_model!r} is not reported by this run's evaluation "
                        f"(it reports {', '.join(reported)}); add it to eval_metrics (choices: {', '.join(METRICS)})")
