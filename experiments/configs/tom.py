"""Training Optimal Masks' mask training (Mikler 2021, Sec. 3.3.1): TOM's step 2.

The whole method (a short dense run, the masks, the retraining) is a pruning
config: ``python -m experiments.prune --config=experiments/configs/gimp.py
--config.pruning=oneshot --config.criterion=tom ...`` (see
``experiments/configs/presets.py``, ``tom_*``). This config is the mask
training alone, for the benchmark (``--methods=tom``) and for
``experiments.train``, where it learns masks over the model's *initial*
weights (a supermask trained with TOM's gradient).

`settings` are this config's ``tom`` fields, `driver_settings` the pruning
config's (with the mask-training run); `mask_training` builds the
reparametrization and the logits' optimizer from them.
"""

import ml_collections
import optax

import randjax
from experiments import registry
from experiments.configs import dense
from randjax.methods import tom


def settings() -> ml_collections.ConfigDict:
    """TOM's method settings (the thesis' defaults; the code's in comments)."""
    return ml_collections.ConfigDict(dict(
        clip=0.1,                 # the code: 0.1 / learning_rate
        penalty="l1",             # or "l2", "none"
        penalty_scale=1e-7,       # the code's; small nets need more (randjax.methods.tom)
        divide_by_weight=False,   # the code: True
        logit_init=4.0,
        bound=15.0,
        scope="global",           # of the final top-density masks
        bits="hash",              # the samples' bits (randjax.masks.bernoulli_mask)
    ))


def driver_settings() -> ml_collections.ConfigDict:
    """`settings` and the mask-training run of `experiments.prune` (the code's SGD)."""
    config = settings()
    config.update(dict(epochs=1, learning_rate=10.0, momentum=0.9, nesterov=True))
    return config


def mask_training(tom_settings: ml_collections.ConfigDict, density: float, *,
                  weights=None, optimizer: optax.GradientTransformation | None = None,
                  filter: randjax.tree.Filter = randjax.is_kernel
                  ) -> tuple[randjax.Reparam, optax.GradientTransformation]:
    """`randjax.tom` over the leaves ``filter`` picks and its logits' optimizer.

    The optimizer is `tom_gradients`, then ``optimizer`` (default: the SGD
    of `driver_settings`); ``weights`` (TOM's frozen tree) is needed by
    ``divide_by_weight``.
    """
    s = tom_settings
    if optimizer is None:
        optimizer = optax.sgd(s.learning_rate, momentum=s.momentum or None,
                              nesterov=s.nesterov)
    reparam = tom.tom(density, logit_init=s.logit_init, scope=s.scope, filter=filter,
                      bits=s.bits)
    gradients = tom.tom_gradients(clip=s.clip, penalty=s.penalty,
                                  penalty_scale=s.penalty_scale,
                                  divide_by_weight=s.divide_by_weight, weights=weights,
                                  bound=s.bound)
    return reparam, optax.chain(gradients, optimizer)


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "tom"
    config.update(optimizer="sgd", learning_rate=10.0, momentum=0.9, nesterov=True)
    config.density = 0.1
    config.tom = settings()
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    """TOM's reparametrization; ``optimizer`` updates the logits after `tom_gradients`."""
    if config.tom.divide_by_weight:
        raise ValueError("tom.divide_by_weight needs the frozen weights: use it through "
                         "experiments.prune (criterion='tom')")
    return registry.Method(*mask_training(config.tom, config.density, optimizer=optimizer))


registry.register("tom", get_config=get_config, build=build)
