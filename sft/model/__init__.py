"""Models: loading (8-bit/4-bit), the processor with its family and labeller (one opening for every command), LoRA
and quantization targets, tiny offline models. May import config/, family/, labels/; never data/, run/ or plan/.
"""
