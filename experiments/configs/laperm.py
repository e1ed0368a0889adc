"""LaPerm (Qiu & Suda, NeurIPS 2020): train by permuting the initial weights.

    python -m experiments.train --config=experiments/configs/laperm.py \
        --config.dataset=fashion_mnist --config.sync_period=20 --workdir=runs/lp

Ordinary parameters (``method="dense"``) trained by `randjax.laperm` around
the inner optimizer (Adam, lr 1e-3, as the reference ihsuy/Train-by-Reconnect):
every ``sync_period`` steps each weight vector becomes its initial values in
the ranking of the current ones. ``laperm_include_1d`` also permutes biases
(and BatchNorm parameters), the reference's ``skip_bias=False``;
``reset_inner_state`` re-initialises Adam at every sync (the reference keeps
it). With ``laperm_eval="synced"`` validation and test accuracy are those of
the network a sync gives at the end of each epoch
(`randjax.reconnect.synced_params`): accuracy right after a sync, as the
paper reports it, even when an epoch's length is not a multiple of the
period; ``"current"`` evaluates the weights as they are.
"""

import ml_collections

from experiments.configs import dense


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.init = "kaiming_uniform"  # Keras he_uniform: U(+-sqrt(6 / fan_in))
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.sync_period = 20
    config.laperm_include_1d = False
    config.reset_inner_state = False
    config.laperm_eval = "synced"  # or "current"
    return config
