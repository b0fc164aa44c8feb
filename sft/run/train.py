"""`sft train RECIPE`: one run in five stages, each taking the result of the one before it.

decide (sft/run/decide.py) → prepare data (sft/run/prepare.py) → build (sft/run/build.py) → fit (sft/run/fit.py) →
finish (sft/run/finish.py). Every refusal happens in the first two, before any weights load and before anything in
output_dir is removed; the whole run holds output_dir's lock (sft/outputs/run_lock.py).
"""

from __future__ import annotations

from sft.config.recipe import Recipe
from sft.outputs.run_lock import run_lock
from sft.run.build import build
from sft.run.decide import decide
from sft.run.finish import finish
from sft.run.fit import fit
from sft.run.prepare import prepare_data


def main(recipe: Recipe, extra_callbacks: list | None = None) -> dict:
    """Train the recipe; returns the run's metrics."""
    with run_lock(recipe.training.output_dir):  # one run per folder, before anything in it is read or written
        setup = decide(recipe)  # every choice: plan, family, collator, what trains, packing, output folder
        data = prepare_data(setup)  # rows read, measured against max_length and counted; packs; eval metrics
        built = build(setup, data, extra_callbacks)  # the model and TRL's trainer
        result = fit(setup, built)  # the old run cleared (overwrite_output_dir), then training
        return finish(setup, data, built, result)  # final evaluation, save, manifest, report
