"""Iterative magnitude pruning (GIMP, Mikler 2021, Algorithm 5) and one-shot pruning.

    python -m experiments.prune --config=experiments/configs/gimp.py \
        --config.variant=lrr --config.dataset=fashion_mnist --workdir=runs/lrr

Round 0 trains the dense network; every later round removes
``1 - density_multiplier`` of the remaining weights (global magnitude by
default), rewinds as ``variant`` says and trains again, until the density is
at most ``target_density``. The variants:

* ``ft`` (fine-tuning): no rewind; the dense schedule's final learning rate,
  constant;
* ``wr`` (weight rewinding, the lottery ticket): weights back to their
  initial values, schedule restarted;
* ``swr`` (stable weight rewinding): weights back to step ``rewind_step``
  (of the dense run, ``rewind_source="dense"``, as open_lth and Frankle et
  al.; or of the previous round, ``"previous"``);
* ``lrr`` (learning-rate rewinding, Renda et al. 2020): weights kept,
  schedule restarted;
* ``sgimp`` (Mikler's sGIMP): weights rewound ``rewind_fraction`` of the
  previous round's steps back into that round's own run, schedule restarted.

``schedule_rewind="restart"`` (default: Mikler's shipped configs) trains the
full ``retrain_epochs`` each round with the whole schedule;
``"fast_forward"`` (open_lth, Renda's LRR) starts the schedule and the data
order at ``rewind_step`` and trains the remaining steps (``swr`` and ``lrr``).
``pruning="oneshot"`` prunes once after the dense run to ``target_density``
and retrains by the variant; with ``criterion="tom"`` (Mikler's Training
Optimal Masks) the masks are learned: ``tom.epochs`` of mask training over
the dense run's final weights (`randjax.methods.tom`), the top
``target_density`` of the logits kept. The dense run then trains the first
``epochs`` of the ``retrain_epochs`` schedule: TOM as the thesis runs it is
a short dense run (10% of the schedule), the masks, then ``variant="lrr"``
(retraining from those weights with the whole schedule); ``pruning="at_init"`` prunes the initial
weights once (``criterion`` ``snip``, ``random`` or ``magnitude``) and trains
the sparse network (its only round, round 0).
"""

import ml_collections
from ml_collections import config_dict

from experiments import registry
from experiments.configs import dense, tom

VARIANTS = ("ft", "wr", "swr", "lrr", "sgimp")
PRUNINGS = ("iterative", "oneshot", "at_init")
CRITERIA = ("magnitude", "snip", "random", "tom")
SCHEDULE_REWINDS = ("restart", "fast_forward")
REWIND_SOURCES = ("dense", "previous")


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "gimp"
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.0
    config.epochs = 10                 # of the dense run (round 0)

    config.pruning = "iterative"       # or "oneshot", "at_init"
    config.variant = "wr"              # ft, wr, swr, lrr, sgimp
    config.density_multiplier = 0.8    # K: each round keeps K of the remaining weights
    config.target_density = 0.2        # stop once the prunable density is <= this
    config.retrain_epochs = config_dict.placeholder(int)  # per later round (None: epochs)
    config.rewind_step = config_dict.placeholder(int)     # swr, fast_forward: k
    config.rewind_fraction = config_dict.placeholder(float)  # sgimp's X (None: 0.75)
    config.rewind_source = config_dict.placeholder(str)   # swr: "dense" (default), "previous"
    config.schedule_rewind = "restart"  # swr, lrr: or "fast_forward"
    config.criterion = "magnitude"     # or "snip", "random", "tom" (oneshot)
    config.scope = "global"            # or "layer"
    config.count = "exact"             # or "mikler", "open_lth" (randjax.pruning)
    config.exclude = ()                # names of kernels never pruned (e.g. "Dense_2")
    config.snip_batches = 1            # batches whose gradients SNIP sums
    config.l2 = 0.0                    # Mikler's l2 * sum(w^2) in the loss (= decay 2 * l2)
    config.tom = tom.driver_settings()  # criterion="tom": the mask training (configs/tom.py)
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    del config, optimizer
    raise ValueError("gimp configs are rounds of training: run them with "
                     "python -m experiments.prune --config=... --workdir=...")


registry.register("gimp", get_config=get_config, build=build)
