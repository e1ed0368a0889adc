"""Ordinary (dense) training: the baseline every method is compared with.

    python -m experiments.train --config=experiments/configs/dense.py \
        --config.model=lenet300_100 --config.dataset=fashion_mnist \
        --config.epochs=10 --workdir=runs/dense
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "dense"

    # Data.
    config.dataset = "digits"
    config.data_dir = config_dict.placeholder(str)
    config.val_fraction = 0.1
    config.train_limit = config_dict.placeholder(int)  # first N training images
    config.normalize = "standardize"
    config.crop_padding = 0
    config.flip = False

    # Model (see randjax.models.get; None keeps the model's own default).
    config.model = "lenet300_100"
    config.init = "kaiming_normal"
    config.width = 1.0
    config.use_bias = config_dict.placeholder(bool)
    config.batch_norm = config_dict.placeholder(bool)
    config.dropout = 0.0

    # Optimisation.
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.momentum = 0.9
    config.nesterov = False
    config.weight_decay = 0.0
    config.schedule = "constant"
    config.warmup_epochs = 0
    config.lr_milestones = ()
    config.lr_gamma = 0.1
    # optax.lookahead around the optimizer when set (slow weights evaluated).
    config.lookahead_sync_period = config_dict.placeholder(int)
    config.lookahead_step_size = 0.5

    # Loop.
    config.epochs = 10
    config.batch_size = 128
    config.drop_remainder = False
    config.eval_batch_size = 1000
    config.checkpoint_every = 1
    config.seed = 0
    return config
