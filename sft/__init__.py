"""sft-toolkit: supervised fine-tuning of vision-language and text models on TRL."""

from sft.torchvision_compat import declare_missing_torchvision_ops

declare_missing_torchvision_ops()
