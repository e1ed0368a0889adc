"""Training under a fixed mask from pruning the initial weights (pruning at init).

    python -m experiments.train --config=experiments/configs/masked.py \
        --config.density=0.1 --config.criterion=random --workdir=runs/random10

Random pruning at initialisation (the baseline every pruning study draws) or
magnitude pruning of the initial weights, then ordinary training under the
mask (`randjax.masked`). SNIP needs gradients on data: run it with
``python -m experiments.prune --config=experiments/configs/gimp.py
--config.pruning=at_init --config.criterion=snip``.
"""

import jax
import ml_collections

import randjax
from experiments import registry
from experiments.configs import dense
from randjax import pruning

CRITERIA = ("random", "magnitude")


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "masked"
    config.density = 0.5            # kept fraction of the prunable kernels
    config.criterion = "random"     # or "magnitude" (of the initial weights)
    config.scope = "global"         # or "layer"
    config.exclude = ()             # kernels never pruned, by name (e.g. "Dense_2")
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    randjax.tree.check_choice(config.criterion, CRITERIA, "criterion")
    randjax.tree.check_choice(config.scope, pruning.SCOPES, "scope")
    density = randjax.tree.check_density(config.density)

    def masks(key, params):
        targets = pruning.select(params, exclude=tuple(config.exclude))
        scores = (pruning.random(jax.random.fold_in(key, 0), targets)
                  if config.criterion == "random" else pruning.magnitude(targets))
        return pruning.masks_at_density(scores, density, scope=config.scope)

    return registry.Method(randjax.masked(masks), optimizer)


registry.register("masked", get_config=get_config, build=build)
