"""Edge-popup (Ramanujan et al., CVPR 2020): learn which random weights to keep.

    python -m experiments.train --config=experiments/configs/edge_popup.py \
        --config.dataset=fashion_mnist --config.density=0.3 --workdir=runs/ep

The weights are drawn by ``config.init`` (with ``scaled_*`` names, fan-in
times the kept fraction) and stay frozen; SGD trains the scores, with the
reference's setup (hidden-networks): lr 0.1, momentum 0.9, weight decay 1e-4
on the scores, cosine schedule, batch 128.
"""

import ml_collections

import randjax
from experiments import registry
from experiments.configs import dense


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "edge_popup"
    config.init = "signed_constant"
    config.use_bias = False
    config.density = 0.5  # fraction of weights kept
    config.scope = "layer"  # or "global": one top-k over all kernels
    config.score_init = "pytorch_default"  # U(+-1/sqrt(fan_in))
    config.rounding = "round"
    config.scale_fan = "kept"
    config.store_weights = True
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.weight_decay = 1e-4
    config.schedule = "cosine_epoch"
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    reparam = randjax.edge_popup(
        config.density, scope=config.scope, weight_init=config.init,
        score_init=config.score_init, rounding=config.rounding,
        scale_fan=config.scale_fan, store_weights=config.store_weights)
    return registry.Method(reparam, optimizer)


registry.register("edge_popup", get_config=get_config, build=build)
