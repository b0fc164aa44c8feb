"""Greedy generation on rows: the replies that the metrics (sft/eval/metrics.py) score, and the prompts they answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft.data.messages import text_of
from sft.eval.metrics import score
from sft.family.families import Family
from sft.labels.labelling import Labeller
from sft.labels.template_inputs import row_context


def reference(example: dict, collator: Labeller | None = None) -> str | None:
    """The row's expected answer: its final assistant reply without its reasoning (None when the row has none);
    given the collator, a grounding row's reply with its boxes written as training wrote them
    (sft/labels/grounding.py), less the special tokens that decoding a generation leaves out, and a tool-calling
    reply's calls as its template writes them, read back as a generation is (sft/labels/reply_spans.py)."""
    messages, dropped = example["messages"], ()
    if collator is not None and example.get("objects"):
        messages = collator.messages_of(example, collator.load_images(example))
        dropped = collator.replies.toolkit_tokens  # special: generation decodes without them, so compare without
    if messages[-1]["role"] != "assistant":
        return None
    if collator is not None and collator.needs_chat_template:
        messages = collator.replies.prepared(messages)  # inline thinking split off the answer
        if messages[-1].get("tool_calls"):
            return collator.replies.written_answer(messages, row_context(example))
    answer = text_of(messages[-1])
    for token in dropped:
        answer = answer.replace(token, "")
    return answer


def split_reasoning(ids: list[int], tokenizer, family: Family) -> tuple[str, str]:
    """(reasoning, answer) of generated token ids: for a family that thinks first (Qwen3.5's `<think>` block, Gemma
    4's thought channel), the tokens before and after the last `reasoning_end`, as its chat template splits a reply
    (found in the ids: Gemma 4's marker is a special token that decoding leaves out); each decoded without special
    tokens, the opening marker dropped, whitespace stripped."""
    reasoning, answer = [], ids
    if family.reasoning_end:
        marker = tokenizer(family.reasoning_end, add_special_tokens=False)["input_ids"]
        ends = [k for k in range(len(ids) - len(marker) + 1) if ids[k:k + len(marker)] == marker]
        if ends:
            reasoning, answer = ids[:ends[-1]], ids[ends[-1] + len(marker):]
    thought = tokenizer.decode(reasoning, skip_special_tokens=True).strip()
    if family.reasoning_start:
        opening = tokenizer.decode(tokenizer(family.reasoning_start, add_special_tokens=False)["input_ids"],
                                   skip_special_tokens=True).strip()
        thought = thought.removeprefix(opening).strip() if opening else thought
    return thought, tokenizer.decode(answer, skip_special_tokens=True).strip()


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after stripping surrounding whitespace (sft.eval.metrics' rule)."""
    return score(["exact_match"], predictions, references).overall.get("exact_match", 0.0)


@dataclass
class Generated:
    """One row's prompt as the model saw it (`readable_prompt`) and its greedy reply."""

    prompt: str
    reply: str  # the answer, without the reasoning (what the metrics score)
    reasoning: str = ""  # what the model thought before it (a thinking family), kept in the prediction files


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
    for token in (collator.family.closing, collator.family.tool_call_end):  # a family not in the table has none
        if token:  # (EOS alone); a tool call ends where the tool answers (Gemma 4's `<|tool_response>`)
            ids.append(tokenizer.convert_tokens_to_ids(token))
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
            new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
            prompts = [readable_prompt(tokenizer, ids) for ids in inputs["input_ids"].tolist()]
            for prompt, ids in zip(prompts, new_tokens):
                thought, answer = split_reasoning(ids, tokenizer, collator.family)
                generated.append(Generated(prompt, answer, thought))
    finally:
        model.train(was_training)
    return generated


def generate_replies(model, collator: Labeller, examples: list[dict], batch_size: int = 8,
                     max_new_tokens: int = 32) -> list[str]:
    """Greedy replies only (see `generate`)."""
    return [g.reply for g in generate(model, collator, examples, batch_size, max_new_tokens)]


def max_reply_tokens(collator: Labeller, references: list[str | None], slack: int = 8,
                     rows: list[dict] | None = None) -> int:
    """Enough new tokens for the longest of the rows' `references` (sft.eval.generation.reference) plus `slack` (a
    wrong answer may run a little longer); given the `rows`, with room for the reasoning a row's reply thinks
    first (and its markers, within the slack)."""
    count = lambda text: len(collator.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    thinking = [0] * len(references)
    if rows is not None and collator.needs_chat_template:
        last = [collator.replies.prepared(row["messages"])[-1] for row in rows]
        thinking = [count(m["reasoning"]) + slack if m.get("reasoning") else 0 for m in last]
    lengths = [count(answer) + extra for answer, extra in zip(references, thinking) if answer is not None]
    return max(lengths, default=0) + slack
