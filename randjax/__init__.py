"""randjax: training networks without ordinary weight updates, in JAX.

Methods are pure functions over parameter pytrees: reparametrizations
(`Reparam`: ``init`` / ``apply``) and optax transformations, one module each
in `randjax.methods`, built on the protocol in `randjax.reparam` and the
toolkit in `randjax.tree`. `fit` is the one jitted, data-parallel training
loop they all share; `export` writes their compact file formats; `pruning`
scores and masks weights (for `masked` training); `analysis` holds the
measurements the papers make.
"""

from randjax import (
    analysis,
    data,
    export,
    init,
    masks,
    methods,
    models,
    permute,
    pruning,
    train,
    tree,
)
from randjax.masks import bernoulli_mask, kth_largest, threshold_mask, topk_mask
from randjax.methods.edge_popup import edge_popup
from randjax.methods.laperm import LaPermState, laperm
from randjax.methods.lookahead import lookahead, lookahead_reparam
from randjax.methods.masked import masked
from randjax.methods.slot_machine import slot_machine, slot_select, slot_sgd
from randjax.methods.supermask import supermask
from randjax.methods.tom import tom, tom_gradients
from randjax.reparam import Reparam, apply_updates, dense, dense_from
from randjax.train import fit
from randjax.tree import is_kernel

__version__ = "0.1.0"

__all__ = [
    "LaPermState", "Reparam", "analysis", "apply_updates", "bernoulli_mask", "data",
    "dense", "dense_from", "edge_popup", "export", "fit", "init", "is_kernel",
    "kth_largest", "laperm", "lookahead", "lookahead_reparam", "masked", "masks", "methods",
    "models", "permute", "pruning", "slot_machine", "slot_select", "slot_sgd", "supermask",
    "threshold_mask", "tom", "tom_gradients", "topk_mask", "train", "tree",
]
