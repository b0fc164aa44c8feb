"""Evaluation: generation on rows, metrics on the replies, and the prediction files each evaluation writes.
May import data/, family/, labels/; never run/, model/, plan/ or config/.
"""
