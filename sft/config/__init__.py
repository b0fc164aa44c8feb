"""The recipe: flat YAML read by TRL's parser into TRL's dataclasses and the toolkit's own (`DataArguments`), every
key checked when the recipe loads. May import data/, family/, eval/ (names they define); never labels/, model/,
plan/, check/, pages/, outputs/ or run/.
"""
