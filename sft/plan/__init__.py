"""`sft plan`: parameters and per-GPU memory from the architecture alone (meta device), and `auto` choices.
May import config/, family/, labels/, model/; never run/.
"""
