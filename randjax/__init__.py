"""randjax: training networks without ordinary weight updates, in JAX.

Methods are pure functions over parameter pytrees (see DESIGN.md):
reparametrizations (`Reparam`: ``init`` / ``apply``), optax transformations,
pruning functions and analysis tools. `fit` is the one jitted, data-parallel
training loop they all share.
"""

from randjax import data, init, models, train
from randjax.reparam import Reparam, dense, is_kernel
from randjax.train import fit

__version__ = "0.1.0"

__all__ = ["Reparam", "data", "dense", "fit", "init", "is_kernel", "models", "train"]
