"""LaPerm (Qiu & Suda, NeurIPS 2020): train by permuting the initial weights.

    python -m experiments.train --config=experiments/configs/laperm.py \
        --config.dataset=fashion_mnist --config.sync_period=20 --workdir=runs/lp

Ordinary parameters trained by `randjax.laperm` around the inner optimizer
(Adam, lr 1e-3, as the reference ihsuy/Train-by-Reconnect): every
``sync_period`` steps each weight vector becomes its initial values in the
ranking of the current ones. ``laperm_include_1d`` also permutes biases (and
BatchNorm parameters), the reference's ``skip_bias=False``;
``reset_inner_state`` re-initialises Adam at every sync (the reference keeps
it). With ``laperm_eval="synced"`` validation and test accuracy are those of
the network a sync gives at the end of each epoch
(`randjax.methods.laperm.synced_state`): accuracy right after a sync, as the
paper reports it, even when an epoch's length is not a multiple of the
period; ``"current"`` evaluates the weights as they are.
"""

import ml_collections

import randjax
from experiments import registry
from experiments.configs import dense

_EVALS = ("synced", "current")


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "laperm"
    config.init = "kaiming_uniform"  # Keras he_uniform: U(+-sqrt(6 / fan_in))
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.sync_period = 20
    config.laperm_include_1d = False
    config.reset_inner_state = False
    config.laperm_eval = "synced"  # or "current"
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    if config.laperm_eval not in _EVALS:
        raise ValueError(f"unknown laperm_eval {config.laperm_eval!r}; choose one of {_EVALS}")
    tx = randjax.laperm(optimizer, config.sync_period, include_1d=config.laperm_include_1d,
                        reset_inner_state=config.reset_inner_state)
    synced = config.laperm_eval == "synced"
    return registry.Method(randjax.dense(), tx,
                           randjax.methods.laperm.synced_state if synced else None)


registry.register("laperm", get_config=get_config, build=build)
