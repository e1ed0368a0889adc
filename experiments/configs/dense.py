"""Ordinary (dense) training: the baseline every method is compared with.

    python -m experiments.train --config=experiments/configs/dense.py \
        --config.model=lenet300_100 --config.dataset=fashion_mnist \
        --config.epochs=10 --workdir=runs/dense

Every method's config starts from this one and adds its own fields.
"""

import ml_collections
from ml_collections import config_dict

import randjax
from experiments import registry


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "dense"

    # Data.
    config.dataset = "digits"
    config.data_dir = config_dict.placeholder(str)
    config.val_fraction = 0.1
    config.train_limit = config_dict.placeholder(int)  # first N training images
    config.normalize = "standardize"
    config.num_classes = config_dict.placeholder(int)  # None: the data set's own count
    config.crop_padding = 0
    config.flip = False

    # Model (see randjax.models.get; None keeps the model's own default).
    config.model = "lenet300_100"
    config.init = "kaiming_normal"  # the kernels' initializer (randjax.init.names())
    config.width = 1.0
    config.use_bias = config_dict.placeholder(bool)
    config.batch_norm = config_dict.placeholder(bool)
    config.bn_momentum = config_dict.placeholder(float)  # flax's decay (0.9 = PyTorch's 0.1)
    config.bn_epsilon = config_dict.placeholder(float)
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

    # Loop.
    config.epochs = 10
    config.batch_size = 128
    config.drop_remainder = False
    config.eval_batch_size = 1000
    config.checkpoint_every = 1
    config.seed = 0
    config.tensorboard = False   # also write TensorBoard event files to --workdir
    return config


def hidden_networks(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with the optimiser of hidden-networks' learned dense baselines.

    allenai/hidden-networks trains its dense baselines with SGD lr 0.01,
    momentum 0.9, weight decay 1e-4 added to the gradient (PyTorch) and
    ``cosine_lr`` set once per epoch.
    """
    config.update(optimizer="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4,
                  schedule="cosine_epoch")
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    del config
    return registry.Method(randjax.dense(), optimizer)


registry.register("dense", get_config=get_config, build=build)
