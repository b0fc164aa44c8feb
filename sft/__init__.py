"""sft-toolkit: supervised fine-tuning of vision-language and text models on TRL."""

from sft.torchvision_compat import install_import_hook

install_import_hook()
