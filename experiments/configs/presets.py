"""Named presets that train setting for setting as a paper's reference code.

    python -m experiments.train \
        --config=experiments/configs/presets.py:dense_lenet_fmnist --workdir=runs/p
    python -m experiments.prune \
        --config=experiments/configs/presets.py:lth_lenet_fmnist --workdir=runs/lth

Each preset starts from `dense.get_config()` and overrides what the reference
sets. ``--config.x=y`` overrides still apply after the preset.
"""

import ml_collections

from experiments.configs import dense, edge_popup, gimp, laperm, lookahead, slot_machine, supermask


def dense_lenet_fmnist() -> ml_collections.ConfigDict:
    """Learned dense LeNet-300-100 as hidden-networks trains its baselines.

    allenai/hidden-networks: no biases, kaiming-normal (fan-in, relu gain)
    weights, SGD lr 0.01, momentum 0.9, weight decay 1e-4 added to the
    gradient (PyTorch), ``cosine_lr`` set once per epoch, batch 128, every
    training image (no validation split), no augmentation, inputs scaled to
    [0, 1] then standardised.
    """
    config = dense.hidden_networks(dense.get_config())
    config.update(
        dataset="fashion_mnist", val_fraction=0.0, normalize="standardize",
        model="lenet300_100", use_bias=False, init="kaiming_normal", epochs=10,
        batch_size=128)
    return config


def edge_popup_lenet_fmnist() -> ml_collections.ConfigDict:
    """Edge-popup on LeNet-300-100 as allenai/hidden-networks trains it.

    No biases, half of each layer's weights kept, signed-constant weights
    (``+-sqrt(2 / fan_in)``), scores U(+-1/sqrt(fan_in)), SGD lr 0.1,
    momentum 0.9, weight decay 1e-4 on the scores (added to the gradient),
    ``cosine_lr`` per epoch over 10 epochs, batch 128, all 60,000 training
    images, no augmentation, standardised inputs.
    """
    config = edge_popup.get_config()
    config.update(
        dataset="fashion_mnist", val_fraction=0.0, normalize="standardize",
        model="lenet300_100", use_bias=False, init="signed_constant",
        score_init="pytorch_default", density=0.5, scope="layer",
        optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
        schedule="cosine_epoch", epochs=10, batch_size=128)
    return config


def supermask_lenet_fmnist() -> ml_collections.ConfigDict:
    """Zhou et al.'s supermask (NeurIPS 2019) on edge-popup's LeNet-300-100 set-up.

    No biases, signed-constant weights (``+-sqrt(2 / fan_in)``, the
    initialisation Zhou et al. and hidden-networks find best), mask logits
    from 0 (p = 0.5), a Bernoulli mask sampled at every forward pass,
    evaluation included, 10 epochs, batch 128, all 60,000 training images,
    standardised inputs: `edge_popup_lenet_fmnist`'s data and budget. The
    optimizer is this project's registered default, Adam lr 0.1 with a
    constant rate (`experiments/configs/supermask.py`: the logits' gradients
    are tiny, and Zhou et al.'s SGD needs a rate of 100-200:
    ``--config.optimizer=sgd --config.learning_rate=100 --config.momentum=0.9``).
    """
    config = supermask.get_config()
    config.update(
        dataset="fashion_mnist", val_fraction=0.0, normalize="standardize",
        model="lenet300_100", use_bias=False, init="signed_constant", schedule="constant",
        epochs=10, batch_size=128)
    return config


def _slot_lenet_fmnist(k: int) -> ml_collections.ConfigDict:
    config = slot_machine.get_config()
    config.update(
        dataset="fashion_mnist", val_fraction=0.0, normalize="standardize",
        model="lenet300_100", use_bias=False, k=k, selection="greedy",
        slot_init="official", shared_options=False, optimizer="sgd",
        learning_rate=0.1, momentum=0.9, weight_decay=0.0, schedule="constant",
        epochs=10, batch_size=128)
    return config


def slot_lenet_fmnist_k8() -> ml_collections.ConfigDict:
    """Greedy Slot Machine (K=8) on LeNet-300-100 as maxwell-aladago/slot-machines.

    No biases, 8 options per connection, the code's initialisation (options
    U(+-b), scores U(0, b), ``b = sqrt(6 / (fan_in + fan_out))``), greedy
    selection at training and evaluation, SGD lr 0.1 (the paper's rate for
    K <= 8), momentum 0.9, no weight decay, constant rate, 10 epochs, batch
    128, all 60,000 training images, no augmentation, standardised inputs.
    """
    return _slot_lenet_fmnist(8)


def slot_lenet_fmnist_k2() -> ml_collections.ConfigDict:
    """Greedy Slot Machine (K=2) on LeNet-300-100 as maxwell-aladago/slot-machines.

    As `slot_lenet_fmnist_k8` with 2 options per connection: one bit per
    connection, the same budget as an edge-popup mask.
    """
    return _slot_lenet_fmnist(2)


def laperm_lenet_fmnist() -> ml_collections.ConfigDict:
    """LaPerm on LeNet-300-100 as ihsuy/Train-by-Reconnect trains it.

    Biases on; kernels Keras ``he_uniform`` (``kaiming_uniform`` here:
    U(+-sqrt(6 / fan_in))), zero biases; inner Adam lr 1e-3; a sync every 20
    steps (counted over the whole run, as the reference's ``LaPermTrainLoop``)
    with the biases permuted too (``skip_bias=False``); 5 epochs of batch 128
    (469 steps, the last of 96 images), all 60,000 training images, no
    augmentation, standardised inputs. Test accuracy per epoch is measured
    right after a sync (``laperm_eval="synced"``: the network a sync at the
    epoch's last step gives, `randjax.methods.laperm.synced_state`); the
    reference evaluates every ``validation_freq`` steps, a multiple of ``k``
    in its k=20 notebook (Conv7: 100), so also right after a sync.
    """
    config = laperm.get_config()
    config.update(
        dataset="fashion_mnist", val_fraction=0.0, normalize="standardize",
        model="lenet300_100", use_bias=True, init="kaiming_uniform",
        optimizer="adam", learning_rate=1e-3, weight_decay=0.0, schedule="constant",
        sync_period=20, laperm_include_1d=True, reset_inner_state=False,
        laperm_eval="synced", epochs=5, batch_size=128)
    return config


def _adam_lenet_fmnist(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.update(
        dataset="fashion_mnist", val_fraction=0.0, normalize="standardize",
        model="lenet300_100", use_bias=True, init="kaiming_uniform",
        optimizer="adam", learning_rate=1e-3, weight_decay=0.0, schedule="constant",
        epochs=5, batch_size=128)
    return config


def adam_lenet_fmnist() -> ml_collections.ConfigDict:
    """`laperm_lenet_fmnist`'s model and initial weights, trained by plain Adam.

    The same seed, model and initialisation (so the same theta_0), Adam lr
    1e-3, 5 epochs, batch 128: the baseline LaPerm is compared with.
    """
    return _adam_lenet_fmnist(dense.get_config())


def lookahead_lenet_fmnist() -> ml_collections.ConfigDict:
    """`adam_lenet_fmnist` with Lookahead (k=5, alpha=0.5) around Adam.

    Lookahead's default settings (Zhang et al., NeurIPS 2019); the slow
    weights are evaluated. The paper's third optimizer beside LaPerm and Adam.
    """
    config = _adam_lenet_fmnist(lookahead.get_config())
    config.update(lookahead_sync_period=5, lookahead_step_size=0.5)
    return config


def lth_lenet_fmnist() -> ml_collections.ConfigDict:
    """The lottery ticket (weight rewinding) as open_lth's ``mnist_lenet_300_100``.

    Run with ``python -m experiments.prune``. open_lth's defaults: LeNet-300-100
    with biases, kaiming-normal kernels, SGD lr 0.1 without momentum or weight
    decay, constant rate, batch 128 (469 steps per epoch, the last of 96),
    10 epochs per level, 16 levels (the dense one and 15 prunings), each
    removing 20% of the remaining weights (``sparse_global``:
    ``ceil(0.2 * remaining)``, counting the output layer, which is never
    pruned: ``fc.weight`` ignored), biases unpruned, every level rewound to
    the initial weights with a fresh optimizer. On Fashion-MNIST (MNIST
    is not installable here), all 60,000 training images, standardised.
    """
    config = gimp.get_config()
    config.update(
        dataset="fashion_mnist", val_fraction=0.0, normalize="standardize",
        model="lenet300_100", use_bias=True, init="kaiming_normal",
        optimizer="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0,
        schedule="constant", epochs=10, batch_size=128,
        pruning="iterative", variant="wr", density_multiplier=0.8,
        target_density=0.8 ** 15, scope="global", count="open_lth",
        exclude=("Dense_2",), criterion="magnitude")
    return config


def lth_rewind500_lenet_fmnist() -> ml_collections.ConfigDict:
    """`lth_lenet_fmnist` rewound to iteration 500 of the dense run, as open_lth.

    Every level starts from the dense run's weights after 500 steps (a
    snapshot inside its second epoch), with the schedule and the data order
    fast-forwarded to step 500, and trains the remaining 4,190 of the 4,690
    steps (stable weight rewinding, Frankle et al. 2020).
    """
    config = lth_lenet_fmnist()
    config.update(variant="swr", rewind_step=500, rewind_source="dense",
                  schedule_rewind="fast_forward")
    return config


def _mikler_lenet_fmnist(variant: str) -> ml_collections.ConfigDict:
    config = lth_lenet_fmnist()
    config.update(
        variant=variant, momentum=0.9, nesterov=True, l2=5e-5, schedule="step",
        lr_milestones=(5, 7), lr_gamma=0.1)
    return config


def lrr_lenet_fmnist() -> ml_collections.ConfigDict:
    """Learning-rate rewinding (Renda et al. 2020) with Mikler's LeNet optimizer.

    `lth_lenet_fmnist`'s model, data and budget (16 levels of 10 epochs, 20%
    of the remaining weights pruned globally per level, output layer never
    pruned), but every level keeps the weights the previous one ended with
    and restarts the schedule (Mikler's shipped configs: the whole
    schedule each level). The optimizer of
    sjmikler/on-pruning-methods-for-neural-networks: SGD lr 0.1, Nesterov
    momentum 0.9, ``l2 = 5e-5`` (``l2 * sum(w^2)`` in the loss), the rate
    divided by 10 at 1/2 and 3/4 of each level (epochs 5 and 7 of 10). A
    step schedule is what makes rewinding the rate differ from fine-tuning.
    """
    return _mikler_lenet_fmnist("lrr")


def sgimp_lenet_fmnist() -> ml_collections.ConfigDict:
    """Mikler's sGIMP (2021) on `lrr_lenet_fmnist`'s optimizer and budget.

    Every level starts from the previous level's weights 75% of its steps
    back (``rewind_fraction=0.75``: after the first quarter of that level's
    steps, epoch 2.5 of 10; Mikler uses 0.75-0.95), with a fresh optimizer
    and the whole schedule restarted.
    """
    config = _mikler_lenet_fmnist("sgimp")
    config.rewind_fraction = 0.75
    return config


PRESETS = {"adam_lenet_fmnist": adam_lenet_fmnist,
           "dense_lenet_fmnist": dense_lenet_fmnist,
           "laperm_lenet_fmnist": laperm_lenet_fmnist,
           "lookahead_lenet_fmnist": lookahead_lenet_fmnist,
           "lth_lenet_fmnist": lth_lenet_fmnist,
           "lth_rewind500_lenet_fmnist": lth_rewind500_lenet_fmnist,
           "lrr_lenet_fmnist": lrr_lenet_fmnist,
           "sgimp_lenet_fmnist": sgimp_lenet_fmnist,
           "supermask_lenet_fmnist": supermask_lenet_fmnist,
           "edge_popup_lenet_fmnist": edge_popup_lenet_fmnist,
           "slot_lenet_fmnist_k2": slot_lenet_fmnist_k2,
           "slot_lenet_fmnist_k8": slot_lenet_fmnist_k8}


def get_config(name: str) -> ml_collections.ConfigDict:
    """The preset called ``name`` (the text after ``presets.py:``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
