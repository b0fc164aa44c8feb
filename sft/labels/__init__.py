"""The label contract: reply spans in the rendered text, token labels, the collators, packing and fitting rows to
max_length. May import data/ and family/; never run/, model/, plan/ or the recipe (config/).
"""
