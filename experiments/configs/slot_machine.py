"""Slot Machines (Aladago & Torresani, ICML 2021): pick one of K random weights.

    python -m experiments.train --config=experiments/configs/slot_machine.py \
        --config.dataset=fashion_mnist --config.k=8 --workdir=runs/slots

Every connection holds ``k`` frozen random options; SGD trains their scores
and the option of the largest score is used (``selection="greedy"``; or
``"sample"`` from softmax(scores)). Settings of the reference
(maxwell-aladago/slot-machines): options and scores drawn as its code does
(``slot_init="official"``, Xavier-uniform bound), no biases, SGD lr 0.1
(K <= 8; 0.01 above), momentum 0.9, no weight decay, constant rate, batch
128. ``eval_selection`` None evaluates as ``selection``.
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import dense


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "slot_machine"
    config.use_bias = False
    config.k = 8  # options per connection
    config.selection = "greedy"  # or "sample"
    config.eval_selection = config_dict.placeholder(str)  # None: as selection
    config.slot_init = "official"  # or "paper"
    config.shared_options = False
    config.store_weights = True
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 0.0
    config.schedule = "constant"
    return config
