"""randjax: training networks without ordinary weight updates, in JAX.

Methods are pure functions over parameter pytrees (see DESIGN.md):
reparametrizations (`Reparam`: ``init`` / ``apply``), optax transformations,
pruning functions and analysis tools. `fit` is the one jitted, data-parallel
training loop they all share.
"""

from randjax import data, export, init, masks, models, permute, reconnect, slots, train
from randjax.masks import bernoulli_mask, kth_largest, threshold_mask, topk_mask
from randjax.reconnect import LaPermState, apply_updates, laperm
from randjax.reparam import Reparam, dense, edge_popup, is_kernel, supermask
from randjax.slots import slot_machine, slot_select
from randjax.train import fit

__version__ = "0.1.0"

__all__ = [
    "LaPermState", "Reparam", "apply_updates", "bernoulli_mask", "data", "dense",
    "edge_popup", "export", "fit", "init", "is_kernel", "kth_largest", "laperm", "masks",
    "models", "permute", "reconnect", "slot_machine", "slot_select", "slots", "supermask",
    "threshold_mask", "topk_mask", "train",
]
