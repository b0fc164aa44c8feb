"""The family table and what it decides per model family: parts that can train, image and video budgets, the chat
template. May import data/; never labels/, model/, run/ or the recipe.
"""
