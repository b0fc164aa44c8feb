"""Lets the package index's torchvision import beside a CPU-only torch build.

transformers 5.23 needs torchvision for every video processor (Qwen-VL, SmolVLM2, InternVL, LLaVA-OneVision,
Gemma 4) and for the Pixtral and Llama 4 image processors. The index only has CUDA builds of torchvision (0.28.0
links libtorch_cuda), whose C ops cannot load beside `torch==2.13.0+cpu`; `import torchvision` then fails with
"operator torchvision::nms does not exist" while registering fake kernels for its two NMS ops. Those ops are for
object detection and no processor calls them; the image transforms transformers uses are plain PyTorch. Declaring
the two schemas (without kernels) lets the import succeed: measured here, 7.6 MB of torchvision instead of the
4.8 GB CUDA torch/torchvision pair. On a CUDA build of torch, or when torchvision's ops load, nothing is done.
"""

from __future__ import annotations

import importlib.util
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
    _declared = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        _declared.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
