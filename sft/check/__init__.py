"""`sft check` and `sft preview`: every row measured and labelled as training will see it, before any weights
load. May import config/, data/, family/, labels/; never run/, model/ or plan/.
"""
