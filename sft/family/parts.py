"""What trains: a vision model's three parts — vision tower, projector, language model — each `frozen`, `lora` or
`full` (torchtune's three-way choice; the recipe keys train_vision_tower, train_projector, train_language_model).

A module or parameter belongs to the projector or vision tower when one dotted piece of its name is one of the
family table's names for that part (sft/family/families.py; the projector is looked for first, since Qwen's merger lies
inside its vision tower), to no part when it is one of the table's other towers (audio: always frozen), and to the
language model otherwise (embeddings, decoder layers, norms, the output head).

How each choice trains:
- `lora`: PEFT adapters on the part's linear layers (sft.model.targets.lora_targets picks which);
- `full` beside a LoRA part: PEFT `modules_to_save` (a trained copy of the part's modules, saved in the adapter);
- `full` with no LoRA part: plain full fine-tuning of those parameters (no PEFT), the rest frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft.errors import UserError
from sft.family.families import Family

PARTS = ("vision_tower", "projector", "language_model")
CHOICES = ("frozen", "lora", "full")


@dataclass(frozen=True)
class Parts:
    """The recipe's choice for each part and the learning rate of each (None: the recipe's learning_rate)."""

    vision_tower: str = "frozen"
    projector: str = "frozen"
    language_model: str = "lora"
    learning_rates: tuple[tuple[str, float], ...] = ()  # (part, rate) for parts with their own rate

    def choice(self, part: str) -> str:
        return getattr(self, part)

    def set_to(self, choice: str) -> tuple[str, ...]:
        return tuple(part for part in PARTS if self.choice(part) == choice)

    @property
    def uses_peft(self) -> bool:
        return bool(self.set_to("lora"))

    def describe(self) -> str:
        return ", ".join(f"{part} {self.choice(part)}" for part in PARTS)


DEFAULT_PARTS = Parts()  # today's shape: LoRA on the language model, the rest frozen


def choose_parts(data, model_args) -> Parts:
    """The recipe's parts (DataArguments' train_* keys, ModelConfig's use_peft), refused in one line when they
    contradict each other or the quantization, when the recipe loads."""
    language = data.train_language_model or ("lora" if model_args.use_peft else "full")
    parts = Parts(data.train_vision_tower, data.train_projector, language,
                  tuple((part, rate) for part, rate in (("vision_tower", data.vision_tower_learning_rate),
                                                        ("projector", data.projector_learning_rate))
                        if rate is not None))
    for part in PARTS:
        if parts.choice(part) not in CHOICES:
            raise UserError(f"train_{part} {parts.choice(part)!r}: choose one of {', '.join(CHOICES)}")
    if not model_args.use_peft and parts.uses_peft:
        raise UserError(f"use_peft false with train_{parts.set_to('lora')[0]} lora: LoRA needs PEFT; set use_peft "
                        "true, or choose full or frozen")
    quantized = "load_in_8bit" if model_args.load_in_8bit else "load_in_4bit" if model_args.load_in_4bit else None
    if quantized and language == "full":
        # transformers refuses it after loading: "You cannot perform fine-tuning on purely quantized models".
        how = "use_peft false" if not data.train_language_model else "train_language_model full"
        raise UserError(f"{how} with {quantized}: quantized weights cannot be trained in full; keep LoRA "
                        f"(use_peft true) or train a full-precision base (drop {quantized})")
    if not parts.set_to("lora") + parts.set_to("full"):
        raise UserError("train_vision_tower, train_projector and train_language_model are all frozen: nothing "
                        "would train")
    for part, _ in parts.learning_rates:
        if parts.choice(part) == "frozen":
            raise UserError(f"{part}_learning_rate is set but train_{part} is frozen; train the part or drop the rate")
    return parts


def refuse_untold(family: Family, parts: Parts) -> None:
    """A part the family table cannot tell apart may only stay frozen (one line, before any weights load)."""
    for part in ("vision_tower", "projector"):
        if parts.choice(part) != "frozen" and not getattr(family, part):
            raise UserError(f"train_{part} {parts.choice(part)}: the family table cannot tell the {part} of "
                            f"{family.name} apart ({family.found_by}); it stays frozen (set `family:` to a table "
                            "entry that names it)")


def part_of(name: str, family: Family) -> str | None:
    """The part a module or parameter name belongs to; None for the other towers (always frozen)."""
    pieces = set(name.split("."))
    if pieces & set(family.projector):
        return "projector"
    if pieces & set(family.vision_tower):
        return "vision_tower"
    if pieces & set(family.other_towers):
        return None
    return "language_model"


def whole_modules(model: torch.nn.Module, family: Family, part: str) -> list[str]:
    """The outermost modules whose every parameter belongs to `part` (what PEFT's modules_to_save wraps). A module
    list is never one: the model iterates it rather than calling it, so its entries are taken instead."""
    chosen: list[str] = []

    def visit(prefix: str, module: torch.nn.Module) -> None:
        names = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]
        if names and all(part_of(n, family) == part for n in names) and prefix and not isinstance(
                module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            chosen.append(prefix)
            return
        for child_name, child in module.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", model)
    return chosen


def loose_parameters(model: torch.nn.Module, family: Family, part: str, modules: list[str]) -> list[str]:
    """Parameters of `part` outside every module in `modules` (modules_to_save cannot save them)."""
    return [n for n, _ in model.named_parameters()
            if part_of(n, family) == part and not any(n.startswith(f"{m}.") for m in modules)]


def modules_to_save(model: torch.nn.Module, family: Family, parts: Parts) -> list[str]:
    """The modules of the `full` parts, by full name, for PEFT's modules_to_save beside LoRA parts."""
    names: list[str] = []
    for part in parts.set_to("full"):
        modules = whole_modules(model, family, part)
        loose = loose_parameters(model, family, part, modules)
        if loose:
            raise UserError(f"train_{part} full beside LoRA: PEFT saves whole modules, and {', '.join(loose[:3])} "
                            f"of {family.name} are loose parameters; train it with LoRA, or every part in full")
        names += modules
    return names


def set_trainable(model: torch.nn.Module, family: Family, parts: Parts) -> None:
    """Without PEFT: the `full` parts' parameters train, every other one is frozen."""
    for name, parameter in model.named_parameters():
        part = part_of(name, family)
        parameter.requires_grad_(part is not None and parts.choice(part) == "full")


def parameter_counts(model: torch.nn.Module, family: Family, trainable_only: bool = False) -> dict[str, int]:
    """Part -> number of parameters (only those that train, with `trainable_only`); each tensor counted once."""
    counts = dict.fromkeys(PARTS, 0)
    for name, parameter in model.named_parameters():
        part = part_of(name, family)
        if part is not None and (parameter.requires_grad or not trainable_only):
            counts[part] += parameter.numel()
    return counts


def split_learning_rates(optimizer: torch.optim.Optimizer, model: torch.nn.Module, family: Family,
                         parts: Parts) -> None:
    """Give the parts with their own learning rate their own parameter groups (before any step, so the scheduler,
    built after the optimizer, scales each group's rate)."""
    rates = dict(parts.learning_rates)
    if not rates:
        return
    part_by_id = {id(p): part_of(n, family) for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        for part in (*PARTS, None):
            params = [p for p in group["params"] if part_by_id.get(id(p)) == part]
            if params:
                groups.append({**group, "params": params, "lr": rates.get(part, group["lr"]), "part": part or "other"})
    optimizer.param_groups = groups
