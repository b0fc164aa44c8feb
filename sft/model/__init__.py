"""Models: loading (8-bit/4-bit, processor and family), LoRA and quantization targets, tiny offline models.
May import family/; never data/, labels/, run/ or plan/.
"""
