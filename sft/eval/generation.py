"""Greedy generation on rows: the replies that the metrics (sft/eval/metrics.py) score, and the prompts they answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft.data.messages import text_of
from sft.eval.metrics import score
from sft.family.families import Family
from sft.labels.labelling import Labeller


def reference(example: dict, collator: Labeller | None = None) -> str | None:
    """The row's expected answer: its final assistant reply (None when the row has none); given the collator, a
    grounding row's reply with its boxes written as training wrote them (sft/labels/grounding.py), less the special
    tokens that decoding a generation leaves out."""
    messages, dropped = example["messages"], ()
    if collator is not None and example.get("objects"):
        messages = collator.messages_of(example, collator.load_images(example))
        dropped = collator.replies.toolkit_tokens  # special: generation decodes without them, so compare without
    if messages[-1]["role"] != "assistant":
        return None
    answer = text_of(messages[-1])
    for token in dropped:
        answer = answer.replace(token, "")
    return answer


def answer_of(generated: str, family: Family) -> str:
    """The answer in a decoded generation: for a family that thinks first (Qwen3.5's `<think>` block), the text after
    the last `reasoning_end`, as its chat template stores a reply; whitespace stripped."""
    if family.reasoning_end:
        generated = generated.rsplit(family.reasoning_end, 1)[-1]
    return generated.strip()


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after stripping surrounding whitespace (sft.eval.metrics' rule)."""
    return score(["exact_match"], predictions, references).overall.get("exact_match", 0.0)


@dataclass
class Generated:
    """One row's prompt as the model saw it (`readable_prompt`) and its greedy reply."""

    prompt: str
    reply: str


def readable_prompt(tokenizer, ids: list[int]) -> str:
    """The prompt read back from the very ids the model got (so it shows what the collator rendered), each run of
    special tokens (template headers, image placeholders, padding) shown as one space."""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    runs, run = [], []
    for token in ids + [None]:
        if token is None or token in special:
            if run:
                runs.append(tokenizer.decode(run))
            run = []
        else:
            run.append(token)
    return " ".join(text.strip() for text in runs if text.strip())


def stop_ids(model, collator: Labeller) -> list[int]:
    """Where greedy generation stops: the model's own EOS ids, the tokenizer's EOS and the token that closes a
    supervised turn (the family table's `closing`), which is what training taught the model to end a reply with;
    a checkpoint whose generation config lacks it (Gemma 4's tokenizer EOS is `<eos>`, its turns end `<turn|>`)
    would otherwise run on past the answer."""
    configured = model.generation_config.eos_token_id
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    tokenizer = collator.tokenizer
    ids.append(tokenizer.eos_token_id)
    if collator.family.closing:  # a family not in the table has none: EOS alone
        ids.append(tokenizer.convert_tokens_to_ids(collator.family.closing))
    # An unknown token never stops generation, unless it is the EOS too (Phi-4's <|endoftext|> is both).
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id != tokenizer.eos_token_id else None
    return sorted({i for i in ids if i is not None and i != unk})


@torch.no_grad()
def generate(model, collator: Labeller, examples: list[dict], batch_size: int = 8,
             max_new_tokens: int = 32) -> list[Generated]:
    """Greedy replies to each row's prompt (every turn before its last reply), images included."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer = collator.tokenizer
    generated = []
    try:
        for start in range(0, len(examples), batch_size):
            inputs = collator.generation_inputs(examples[start:start + batch_size]).to(device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(model, collator))
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            prompts = [readable_prompt(tokenizer, ids) for ids in inputs["input_ids"].tolist()]
            generated += [Generated(prompt, answer_of(text, collator.family)) for prompt, text in zip(prompts, decoded)]
    finally:
        model.train(was_training)
    return generated


def generate_replies(model, collator: Labeller, examples: list[dict], batch_size: int = 8,
                     max_new_tokens: int = 32) -> list[str]:
    """Greedy replies only (see `generate`)."""
    return [g.reply for g in generate(model, collator, examples, batch_size, max_new_tokens)]


def max_reply_tokens(collator: Labeller, references: list[str | None], slack: int = 8) -> int:
    """Enough new tokens for the longest of the rows' `references` (sft.eval.generation.reference) plus `slack` (a
    wrong answer may run a little longer)."""
    lengths = [len(collator.tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in references
               if answer is not None]
    return max(lengths, default=0) + slack
