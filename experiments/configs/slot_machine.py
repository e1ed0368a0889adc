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

import randjax
from experiments import registry
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


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    reparam = randjax.slot_machine(
        config.k, selection=config.selection, init=config.slot_init,
        eval_selection=config.eval_selection, shared_options=config.shared_options,
        store_weights=config.store_weights)
    return registry.Method(reparam, optimizer)


registry.register("slot_machine", get_config=get_config, build=build)
