"""`chat_template_path` (TRL's SFTConfig key): a chat template file, read once when the processor loads and set on
the processor and its tokenizer, so the collator, `sft check`/`preview`, generation and the saved run (and so
export, merge and predict, which load the run's processor) all render with the same template.

TRL 1.16's SFTTrainer reads the key itself when it is built: a `.jinja`/`.j2` file into
`processing_class.chat_template` (after the collator and the length check have rendered every row with the old one),
anything else through `clone_chat_template`, which loads a tokenizer from that folder or the Hub, adds its tokens and
resizes the embeddings. The toolkit takes the file form only, the one that changes no weights, and sft/run/train.py
hides the key from SFTTrainer so that it is not applied a second time.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from transformers import ProcessorMixin
from transformers.utils.chat_template_utils import _compile_jinja_template

from sft.errors import UserError
from sft.family.families import Family

TEMPLATE_SUFFIXES = (".jinja", ".j2")  # the files TRL 1.16's SFTTrainer reads as a template


def read_chat_template(path: str | None) -> str | None:
    """The template in the file `path` (None without one), checked to compile as transformers compiles it; a
    folder, a Hub id, another kind of file, a missing, empty or invalid one is refused in one line."""
    if path is None:
        return None
    file = Path(path)
    if file.suffix not in TEMPLATE_SUFFIXES:
        kind = "not a .jinja or .j2 file"
        if file.is_dir():
            saved = file / "chat_template.jinja"
            kind = f"a folder (its template file: {saved})" if saved.is_file() else "a folder"
        raise UserError(f"chat_template_path {path!r}: {kind}; give a chat template file (.jinja or .j2). TRL's "
                        "other form (a tokenizer folder or Hub id, whose tokens it adds and whose embeddings it "
                        "resizes) is not supported")
    if not file.is_file():
        raise UserError(f"chat_template_path {path!r}: no such file")
    template = file.read_text(encoding="utf-8")
    if not template.strip():
        raise UserError(f"chat_template_path {path!r}: the file is empty")
    try:  # transformers' own environment, so a `{% generation %}` block or `loopcontrols` compile as they will run
        _compile_jinja_template(template)
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"chat_template_path {path}: not valid Jinja (line {exc.lineno}: {exc.message})") from None
    return template


def with_chat_template(processing_class, family: Family, template: str | None):
    """(processing_class, family) with `template` set on the processor and on its tokenizer (a text model's
    tokenizer, Phi-4's processor and a processor's save read the tokenizer's); unchanged without one. A family
    labelled without a chat template (PaliGemma's prefix/suffix call) would never use it, so it is refused."""
    if template is None:
        return processing_class, family
    if family.labels != "chat_template":
        raise UserError(f"chat_template_path: the {family.name} family takes prompt and answer through its "
                        "processor's own call, not a chat template; remove chat_template_path")
    processing_class.chat_template = template
    if isinstance(processing_class, ProcessorMixin):
        processing_class.tokenizer.chat_template = template
    return processing_class, family
