"""Zhou et al.'s supermask (NeurIPS 2019): learn Bernoulli mask logits.

    python -m experiments.train --config=experiments/configs/supermask.py \
        --config.dataset=fashion_mnist --workdir=runs/sm

Masks are sampled at every forward pass, evaluation included
(``sample_at_eval``). The logits' gradients are tiny (sigmoid slope times a
frozen weight), so plain SGD needs a very large rate (the reference used
100-200); Adam at 0.1 trains reliably and is the default here.
"""

import ml_collections

import randjax
from experiments import registry
from experiments.configs import dense


def get_config() -> ml_collections.ConfigDict:
    config = dense.get_config()
    config.method = "supermask"
    config.init = "signed_constant"
    config.use_bias = False
    config.logit_init = 0.0
    config.sample_at_eval = True
    config.dynamic_scaling = False
    config.store_weights = True
    config.optimizer = "adam"
    config.learning_rate = 0.1
    return config


def build(config: ml_collections.ConfigDict, optimizer) -> registry.Method:
    reparam = randjax.supermask(
        logit_init=config.logit_init, sample_at_eval=config.sample_at_eval,
        dynamic_scaling=config.dynamic_scaling, weight_init=config.init,
        store_weights=config.store_weights)
    return registry.Method(reparam, optimizer)


registry.register("supermask", get_config=get_config, build=build)
