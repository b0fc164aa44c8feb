"""Lets the package index's torchvision import beside a CPU-only torch build.

transformers 5.23 imports torchvision in `image_utils` as soon as it is installed, and needs it for every video
processor (Qwen-VL, SmolVLM2, InternVL, LLaVA-OneVision, Gemma 4) and the Pixtral and Llama 4 image processors.
The index only has CUDA builds of torchvision (0.28.0 links libtorch_cuda), whose C ops cannot load beside
`torch==2.13.0+cpu`; `import torchvision` then fails with "operator torchvision::nms does not exist" while
registering fake kernels for its two NMS ops. Those ops are for object detection and no processor calls them; the
image transforms transformers uses are plain PyTorch. Declaring the two schemas (without kernels) before
torchvision loads lets the import succeed: 7.6 MB of torchvision instead of the 4.8 GB CUDA torch/torchvision pair.
On a CUDA build of torch, or when torchvision's own ops load, nothing is declared.

The hook is installed by `import sft`, and for every interpreter of the Makefile's venv by a .pth file
(`install_for_interpreter`, so a merged model loads with plain transformers too); it costs nothing until
torchvision is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_declared = None  # the Library object must stay alive for its definitions to stay registered


def declare_missing_torchvision_ops() -> None:
    global _declared
    import torch

    spec = importlib.util.find_spec("torchvision")
    if _declared is not None or spec is None or torch.version.cuda is not None:
        return
    extension = next(Path(spec.origin).parent.glob("_C*.so"), None)
    try:
        if extension is not None:
            torch.ops.load_library(str(extension))
            return  # a CPU build of torchvision: its ops are real
    except OSError:
        pass
    if hasattr(torch.ops.torchvision, "nms"):
        return  # declared already (by the copy that the venv's .pth loads)
    _declared = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        _declared.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs the declaration once, just before the first `import torchvision`, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            declare_missing_torchvision_ops()
        return None


def install_import_hook() -> None:
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(finder, _BeforeTorchvision) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())



def install_for_interpreter() -> Path:
    """Copy this module into site-packages as a standalone module and load it from a .pth file at every start
    (the sft package itself is not imported then, so checkouts beside this one keep their own code)."""
    import shutil
    import site

    packages = Path(site.getsitepackages()[0])
    shutil.copyfile(__file__, packages / "_sft_torchvision_hook.py")
    pth = packages / "_sft_torchvision_hook.pth"
    pth.write_text("import _sft_torchvision_hook; _sft_torchvision_hook.install_import_hook()\n", encoding="utf-8")
    return pth
