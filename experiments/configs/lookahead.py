"""Lookahead (Zhang et al., NeurIPS 2019) around the configured optimizer.

    python -m experiments.train --config=experiments/configs/lookahead.py \
        --config.dataset=fashion_mnist --workdir=runs/la

`randjax.lookahead` with ``lookahead_sync_period`` fast steps between slow
updates of step size ``lookahead_step_size`` (the paper's defaults k = 5,
alpha = 0.5); the slow weights are evaluated (`randjax.lookahead_reparam`).
LaPerm's paper compares with it.
"""

import ml_collections

import randjax
from experiments import registry
from experiments.configs import dense


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "lookahead"
    config.lookahead_sync_period = 5
    config.lookahead_step_size = 0.5
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    tx = randjax.lookahead(optimizer, config.lookahead_sync_period,
                           config.lookahead_step_size)
    return registry.Method(randjax.lookahead_reparam(), tx)


registry.register("lookahead", get_config=get_config, build=build)
