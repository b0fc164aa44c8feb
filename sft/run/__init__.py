"""`sft train` in stages (decide, prepare data, build, fit, finish), the trainer, the run's guards and launch
checks. The top stage: it may import every other; nothing but sft/cli.py imports it.
"""
