"""`sft train` in stages — decide, prepare data, build, fit, finish (sft/run/train.py) — with the trainer, the run's
guards and the launch checks. The top stage: it may import every other; only the command line imports it.
"""
