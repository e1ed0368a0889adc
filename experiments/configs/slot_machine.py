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

``slot_mode="factored"`` trains one number per connection instead of K
scores (`randjax.methods.slot_machine.slot_sgd`: the same greedy selections
as SGD on the scores, K-fold smaller trained state); it needs
``optimizer="sgd"`` (momentum, Nesterov, weight decay and schedules are
kept) and ``selection="greedy"``:

    python -m experiments.train --config=experiments/configs/presets.py:slot_lenet_fmnist_k8 \
        --config.slot_mode=factored --workdir=runs/slots_factored
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
    config.slot_mode = "plain"  # or "factored": one number per connection, SGD only
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 0.0
    config.schedule = "constant"
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    """The Slot Machine of ``config``; ``optimizer`` is `experiments.train.make_optimizer`'s,
    which is `slot_sgd` under ``slot_mode="factored"``.

    Raises:
        ValueError: ``slot_mode="factored"`` with another optimizer than SGD
            (Adam's per-score scaling breaks the factorisation), or a field
            `randjax.slot_machine` refuses.
    """
    mode = randjax.tree.check_choice(config.get("slot_mode", "plain"), ("plain", "factored"),
                                     "config.slot_mode")
    if mode == "factored" and config.optimizer != "sgd":
        raise ValueError(
            f"config.slot_mode='factored' trains with SGD only (slot_sgd: momentum, "
            f"Nesterov, weight decay, schedules), got config.optimizer="
            f"{config.optimizer!r}: Adam and AdamW rescale every score by its own "
            "moments, so the K scores of a connection leave the line the factored "
            "mode stores; use config.slot_mode='plain'")
    reparam = randjax.slot_machine(
        config.k, selection=config.selection, init=config.slot_init,
        eval_selection=config.eval_selection, shared_options=config.shared_options,
        store_weights=config.store_weights, mode=mode)
    return registry.Method(reparam, optimizer)


registry.register("slot_machine", get_config=get_config, build=build)
