"""Every model family the tests cover, once: its table entry, how its tiny model is built, its chat template, and
what it does differently, declared here and nowhere else.

The generic tests (tests/test_family_contract.py, tests/test_family_targets.py) run over `CASES`; what a family
supervises is read from its `sft.family.families` entry (`closing`) plus the quirks below, so a test never branches on a
family's name. Several cases may share one table entry (Qwen3.5 with thinking on and off; SmolVLM and SmolVLM2).

Adding a family (after its entry in sft/family/families.py; test_family_contract.py fails until the table entry has a
case and a row in docs/families.md):
1. its builder: a `TinySpec` (tests/families/build.py) — special tokens and their roles, `config(tok)`,
   `processor(tok, template)` — in tests/families/misc.py or a module of its own, provenance beside it;
2. one `Case` in `CASES` below: name, `family_named(...)`, `from_spec(SPEC)`, its template (a file of
   shared/fixtures/chat-templates, or a Path), and only the quirks its template has (the fields' comments);
3. `pytest tests/test_family_contract.py tests/test_family_targets.py -k <name>`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sft.data.messages import text_of
from sft.family.families import Family, family_named
from sft.model import tiny
from tests.conftest import CHAT_TEMPLATES
from tests.families import misc, paligemma, phi4, qwen, thinking
from tests.families.build import TinySpec, build_from
from tests.families.rows import SHAPES


@dataclass(frozen=True)
class Case:
    """One tiny model of one family, and how its template differs from the plain contract (the defaults)."""

    name: str
    family: Family  # its entry in sft.family.families.FAMILIES
    build: Callable[[Path, str | None], None]  # (folder, chat template text) -> the model and processor written there
    template: str | Path | None = None  # a file name in shared/fixtures/chat-templates, or a path (a template kept in
    # tests/families/templates); None: the builder brings its own (sft/model/tiny.py) or the family has none (PaliGemma)
    images: tuple[bool, ...] = (False, True)  # rows it takes without / with an image (text model: no image)
    shapes: tuple[str, ...] = tuple(SHAPES)  # the row shapes (tests/families/rows.py) it takes
    reply_prefix: str = ""  # what the template writes between the generation prompt and a reply (supervised)
    thinking: str = ""  # what the last reply's span starts with: the rest of an empty thinking block
    inserts_eos: bool = False  # the template closes no turn: the collator inserts the tokenizer's EOS after a reply
    prompt_extra: str = ""  # what the template's own generation prompt adds after what training saw
    system: str | None = None  # a system turn the element rows need to train (tests/families/report.py)
    two_image_turns_refused: str | None = None  # regex of the one-line refusal of images in two turns
    round_trip: bool = False  # an 8-bit run exported, merged and predicted (tests/families/round_trip.py)
    videos: bool = True  # False: the table entry takes video, this checkpoint's processor does not (SmolVLM v1)
    # Thinking and tools (tests/families/thinking.py; tests/test_thinking_and_tools.py): how the template writes a
    # reply's reasoning before its answer ("{reasoning}" stands for it; None: refused, the template has no thinking),
    # before a call turn's calls (default: as `thinks`), and a call turn's calls (None: refused, it writes no calls).
    thinks: str | None = None
    call_thinks: str | None = None
    calls: Callable[[list[dict]], str] | None = None
    tool_images: bool = True  # False: given tools, its template writes the first user turn as text (images refused)
    tool_result_images: bool = True  # False: its template writes a tool result's content as text (images refused)

    @property
    def vision(self) -> bool:
        """Whether the case takes images (and so trains on the element task)."""
        return True in self.images

    @property
    def video(self) -> bool:
        """Whether the case takes videos (tests/test_family_video.py): its table entry names video inputs."""
        return bool(self.family.video_inputs) and self.videos

    @property
    def template_path(self) -> Path | None:
        if self.template is None or isinstance(self.template, Path):
            return self.template
        return CHAT_TEMPLATES / self.template

    def chat_template(self) -> str | None:
        return self.template_path.read_text(encoding="utf-8") if self.template_path else None

    def expected(self, messages: list[dict]) -> str:
        """The supervised text of a row (shared/DESIGN.md's label contract): each reply without its surrounding
        whitespace after the template's reply prefix, up to and including the table's closing token; with a
        thinking template, the last reply's span starts with the rest of its empty thinking block."""
        replies = [self.reply_prefix + text_of(m).strip() + self.family.closing
                   for m in messages if m["role"] == "assistant"]
        replies[-1] = self.thinking + replies[-1]
        return "".join(replies)


def from_sft_tiny(name: str) -> Callable[[Path, str | None], None]:
    """A builder of sft/model/tiny.py (its chat template is its own)."""
    return lambda out, template: tiny.BUILDERS[name](out)


def from_spec(spec: TinySpec) -> Callable[[Path, str | None], None]:
    return functools.partial(build_from, spec)


CASES = (
    Case("llama", family_named("llama"), from_sft_tiny("llama"), images=(False,)),
    Case("mllama", family_named("mllama"), from_sft_tiny("mllama")),
    # SmolVLM's template writes "Assistant:" as the generation prompt and "Assistant: reply" for the turn.
    # SmolVLM v1 (Idefics3Processor: no video processor) shares SmolVLM2's table entry.
    Case("idefics3", family_named("idefics3"), from_sft_tiny("idefics3"), reply_prefix=" ", videos=False),
    Case("qwen2_vl", family_named("qwen2_vl"), from_spec(qwen.SPECS["qwen2_vl"]), "trl_qwen2_5_vl.jinja"),
    Case("qwen2_5_vl", family_named("qwen2_5_vl"), from_spec(qwen.SPECS["qwen2_5_vl"]), "trl_qwen2_5_vl.jinja",
         round_trip=True),
    Case("qwen3_vl", family_named("qwen3_vl"), from_spec(qwen.SPECS["qwen3_vl"]), "trl_qwen3_vl.jinja",
         calls=thinking.qwen3_vl_calls),
    # Thinking on: the generation prompt ends `<think>\n`, so the last reply's span starts with "\n</think>\n\n".
    Case("qwen3_5_think", family_named("qwen3_5"), from_spec(qwen.SPECS["qwen3_5"]), "trl_qwen3_5_think.jinja",
         thinking="\n</think>\n\n", thinks=thinking.QWEN3_5_THINKS, calls=thinking.qwen3_5_calls),
    Case("qwen3_5_nothink", family_named("qwen3_5"), from_spec(qwen.SPECS["qwen3_5"]), "trl_qwen3_5_nothink.jinja",
         thinks=thinking.QWEN3_5_THINKS, calls=thinking.qwen3_5_calls),
    Case("internvl", family_named("internvl3"), from_spec(misc.SPECS["internvl"]),
         "transformers_internvl_convert_chat_template.jinja"),
    # Mistral 3's template writes its ~1,700-character default system prompt into a row without a system turn; in a
    # 2-layer random model that drowns the 4 image tokens (measured: one element named for both, accuracy 0.50), and
    # docs/families.md advises a system turn for Mistral 3 anyway (the default prompt carries today's date).
    Case("mistral3", family_named("mistral3"), from_spec(misc.SPECS["mistral3"]),
         "llamacpp_mistralai-Mistral-Small-3.1-24B-Instruct-2503.jinja", system="Name the element.",
         calls=thinking.mistral3_calls, tool_result_images=False),
    Case("llama4", family_named("llama4"), from_spec(misc.SPECS["llama4"]),
         "transformers_llama4_processing_chat_template.jinja", calls=thinking.llama4_calls, tool_images=False,
         tool_result_images=False),
    Case("gemma3", family_named("gemma3"), from_spec(misc.SPECS["gemma3"]), "trl_gemma3.jinja", round_trip=True),
    # LLaVA-1.5 writes "ASSISTANT:" as the generation prompt and "ASSISTANT: reply" with nothing after it.
    Case("llava", family_named("llava"), from_spec(misc.SPECS["llava"]), "llava_1_5_hub_chat_template.jinja",
         reply_prefix=" ", inserts_eos=True),
    Case("smolvlm", family_named("idefics3"), from_spec(misc.SPECS["smolvlm"]),
         "transformers_smolvlm_DEFAULT_CHAT_TEMPLATE.jinja", reply_prefix=" "),
    # LLaVA-NeXT (Mistral): "[/INST]" then " reply</s>".
    Case("llava_next", family_named("llava_next"), from_spec(misc.SPECS["llava_next"]), "trl_llava_next.jinja",
         reply_prefix=" "),
    # Its processor tiles a lone image (the rows before a later image) but not one of several.
    Case("llava_onevision", family_named("llava_onevision"), from_spec(misc.SPECS["llava_onevision"]),
         "transformers_llava_onevision_convert_chat_template.jinja",
         two_image_turns_refused=r"the processor expands the images before a later one differently .* put the "
                                 r"row's images in its first user turn$"),
    # Its generation prompt adds an empty thought block that training rows lack.
    # It writes reasoning only beside tool calls, and a call, the tool's response and the answer in one model turn.
    Case("gemma4", family_named("gemma4"), from_spec(misc.SPECS["gemma4"]), "axolotl_gemma4.jinja",
         prompt_extra="<|channel>thought\n<channel|>", call_thinks=thinking.GEMMA4_THINKS, calls=thinking.gemma4_calls),
    # No chat template: one prompt with its image(s), one answer (its processor's prefix/suffix call).
    Case("paligemma", family_named("paligemma"), from_spec(paligemma.SPEC), images=(True,),
         shapes=("instruction", "prompt_completion"),
         two_image_turns_refused=r"takes one prompt and one answer per row", round_trip=True),
    # No whitespace anywhere in its template, which the tests keep in tests/families/templates (PROVENANCE.md there).
    Case("phi4_multimodal", family_named("phi4_multimodal"), from_spec(phi4.SPEC), phi4.TEMPLATE),
)
BY_NAME = {case.name: case for case in CASES}
VISION = tuple(case for case in CASES if case.vision)
VIDEO = tuple(case for case in CASES if case.video)


NO_TEMPLATES = pytest.mark.skipif(not CHAT_TEMPLATES.is_dir(), reason=f"{CHAT_TEMPLATES} is absent")


def param(case: Case, *values):
    """A pytest param of `case` (and `values`), skipped when the case's chat template file is absent."""
    ids = [case.name, *(("image" if value else "text") if isinstance(value, bool) else str(value) for value in values)]
    absent = case.template_path is not None and not case.template_path.is_file()
    return pytest.param(case, *values, id="-".join(ids),
                        marks=[pytest.mark.skip(reason=f"{case.template_path} is absent")] if absent else [])


def cases(selected) -> list:
    """pytest params of the `selected` cases."""
    return [param(case) for case in selected]


def build(case: Case, out: Path, seed: int = 0) -> Path:
    """Write `case`'s tiny random model and its processor to `out`; returns the folder."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    case.build(out, case.chat_template())
    return out


class Built:
    """The tiny models of a test session: each built on its first use, then its folder and loaded pair reused."""

    def __init__(self, root: Path):
        self.root = root
        self.folders: dict[str, Path] = {}
        self.loaded: dict[str, tuple] = {}

    def folder(self, case: Case | str) -> Path:
        case = BY_NAME[case] if isinstance(case, str) else case
        if case.name not in self.folders:
            self.folders[case.name] = build(case, self.root / case.name)
        return self.folders[case.name]

    def load(self, case: Case):
        """(processor, model in eval mode) as the toolkit loads them (sft.model.loading), with the case's family."""
        from transformers import AutoConfig
        from trl import ModelConfig

        from sft.model.loading import load_model, load_processor

        if case.name not in self.loaded:
            folder = str(self.folder(case))
            processor = load_processor(folder, AutoConfig.from_pretrained(folder), family=case.family)
            model = load_model(ModelConfig(model_name_or_path=folder), family=case.family).eval()
            self.loaded[case.name] = processor, model
        return self.loaded[case.name]
