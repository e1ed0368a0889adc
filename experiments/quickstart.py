"""The quick start: every method side by side on the embedded digits, in two minutes.

    python -m experiments.quickstart [--seeds=3] [--workdir=runs/quickstart]

`experiments.compare` with other defaults: LeNet-300-100 on scikit-learn's
8x8 digits (no download) under dense SGD, edge-popup, supermask, Slot
Machines, LaPerm, the lottery ticket (weight rewinding), learning-rate
rewinding and sGIMP, each with its preset's settings and epochs, three
seeds each. The pruning methods run six levels instead of sixteen, each
removing half of the remaining weights (``--density_multiplier=0.5``,
``--target_density=0.035``; open_lth's count, with the output layer
counted but never pruned), and checkpoint once per level; edge-popup runs
again at the share of weights they keep. Prints the table and writes
``compare.md``, ``compare.json`` and ``compare.png`` to ``--workdir``;
every flag of `experiments.compare` applies (``--methods``, ``--epochs``,
``--dataset``, ...).
"""

from __future__ import annotations

import functools

import ml_collections
from absl import app

from experiments import compare, sweeps


def get_config() -> ml_collections.ConfigDict:
    """`experiments.compare`'s settings for a two-minute run on digits."""
    settings = compare.get_config()
    settings.update(dataset="digits", seeds=3, density_multiplier=0.5, target_density=0.035,
                    checkpoint_every=10, workdir="runs/quickstart")
    return settings


if __name__ == "__main__":
    sweeps.define_flags(get_config(), compare.HELP)
    app.run(functools.partial(compare.main, get_config=get_config))
