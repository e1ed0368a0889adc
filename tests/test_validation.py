"""Property test: every public constructor refuses a bad argument, by name, before JAX runs.

For one argument at a time, hypothesis draws values that are invalid for it
(strings, truthy strings, None, negative / zero / non-finite numbers, floats
where ints are expected, bools where numbers are expected, out-of-range
values, ...) and the constructor must raise ValueError or TypeError whose
message names the argument, without a single JAX primitive bound first:
``jax.extend.core.Primitive.bind`` raises inside the call (and ``jit`` is
disabled, so a cached jitted call would bind too).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.extend.core import Primitive

import randjax
from randjax import data, init, masks, models, pruning
from randjax.methods import structured, tom

# Arrays the calls take, made before any call is watched.
KEY = jax.random.key(0)
SCORES = {"w": jnp.arange(6.0).reshape(2, 3)}
MASKS = {"w": jnp.ones((2, 3), bool)}
VECTOR = jnp.arange(4.0)
IMAGES = jnp.zeros((2, 4, 4, 1))
MISSING = os.path.join(tempfile.gettempdir(), "randjax-test-validation-no-such-dir")

# -- invalid values ----------------------------------------------------------

TEXT = st.text(max_size=6)
TRUTHY = st.sampled_from(["no", "yes", "False", "True", "0", "1", "", "none"])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
HUGE = st.sampled_from([10**30, 1e300, -1e300])
JUNK = st.one_of(TRUTHY, TEXT, st.lists(st.integers(), max_size=2), st.just(object()))


def not_bool(none_ok: bool = False):
    options = [JUNK, st.integers(), st.floats(allow_nan=True), st.just(np.bool_(True))]
    return st.one_of(*options, *([] if none_ok else [st.none()]))


def not_int(minimum: int | None = None, none_ok: bool = False):
    options = [JUNK, st.booleans(), NON_FINITE, st.floats(-1e6, 1e6),
               st.just(np.float32(3.0))]
    if minimum is not None:
        options.append(st.integers(max_value=minimum - 1))
    return st.one_of(*options, *([] if none_ok else [st.none()]))


def not_real(low: float | None = None, high: float | None = None, *, low_ok: bool = True,
             high_ok: bool = True, none_ok: bool = False):
    """Non-reals and reals outside the range from ``low`` to ``high`` (each end
    included when ``low_ok`` / ``high_ok``)."""
    options = [JUNK, st.booleans(), NON_FINITE, st.just(jnp.float32(0.5))]
    if low is not None:
        options += [st.floats(max_value=low, exclude_max=low_ok, allow_nan=False,
                              allow_infinity=False),
                    st.integers(max_value=math.ceil(low) - low_ok), st.just(-1e300)]
    if high is not None:
        options += [st.floats(min_value=high, exclude_min=high_ok, allow_nan=False,
                              allow_infinity=False),
                    st.integers(min_value=math.floor(high) + high_ok), HUGE]
    return st.one_of(*options, *([] if none_ok else [st.none()]))


def not_choice(choices, none_ok: bool = False):
    options = [TEXT.filter(lambda s: s not in choices), st.integers(), st.booleans(),
               st.sampled_from([c.upper() for c in choices if isinstance(c, str)] or ["X"])]
    return st.one_of(*options, *([] if none_ok else [st.none()]))


def not_callable(none_ok: bool = False, names: tuple = ()):
    """Values that are not callables (nor, when ``names``, a registered name)."""
    options = [TEXT.filter(lambda s: s not in names), st.integers(), st.floats(),
               st.booleans()]
    return st.one_of(*options, *([] if none_ok else [st.none()]))


def _floating_dtype(value) -> bool:
    try:
        return np.issubdtype(np.dtype(value), np.floating)
    except (TypeError, ValueError, SyntaxError):
        return False


NOT_DTYPE = st.one_of(TEXT, st.integers(), st.sampled_from([jnp.int32, np.bool_, "int8"])
                      ).filter(lambda v: not _floating_dtype(v))
NOT_DENSITY = not_real(0.0, 1.0, low_ok=False)  # (0, 1]
NOT_MASKS = st.one_of(TEXT, st.none(), st.integers().filter(lambda i: i not in (0, 1)),
                      st.floats(allow_nan=True).filter(lambda f: f not in (0.0, 1.0)),
                      st.dictionaries(st.sampled_from(["w"]), st.none(), min_size=1))
NOT_MISSING_DIR = st.one_of(st.integers(), st.booleans(), st.floats(),
                            st.builds(lambda s: os.path.join(MISSING, s), TEXT))
INITIALIZERS = tuple(init.names())


class Case(NamedTuple):
    """``call(value)`` must refuse every value of ``invalid``, naming ``name``."""

    id: str
    call: Callable[[Any], Any]
    invalid: st.SearchStrategy
    name: str


def case(id, call, invalid, name=None):
    return Case(id, call, invalid, name or id.split(".")[-1])


CASES = [
    # edge_popup
    case("edge_popup.density", lambda v: randjax.edge_popup(v), NOT_DENSITY),
    case("edge_popup.scope", lambda v: randjax.edge_popup(0.5, scope=v),
         not_choice(("layer", "global"))),
    case("edge_popup.rounding", lambda v: randjax.edge_popup(0.5, rounding=v),
         not_choice(masks.ROUNDINGS)),
    case("edge_popup.filter", lambda v: randjax.edge_popup(0.5, filter=v), not_callable()),
    case("edge_popup.weight_init", lambda v: randjax.edge_popup(0.5, weight_init=v),
         not_callable(none_ok=True, names=INITIALIZERS)),
    case("edge_popup.score_init", lambda v: randjax.edge_popup(0.5, score_init=v),
         not_callable(names=INITIALIZERS)),
    case("edge_popup.scale_fan", lambda v: randjax.edge_popup(0.5, scale_fan=v),
         not_choice(("kept", "reference"))),
    case("edge_popup.train_others", lambda v: randjax.edge_popup(0.5, train_others=v),
         not_bool()),
    case("edge_popup.store_weights", lambda v: randjax.edge_popup(
        0.5, weight_init="signed_constant", store_weights=v), not_bool()),
    # supermask
    case("supermask.logit_init", lambda v: randjax.supermask(logit_init=v), not_real()),
    case("supermask.filter", lambda v: randjax.supermask(filter=v), not_callable()),
    case("supermask.sample_at_eval", lambda v: randjax.supermask(sample_at_eval=v), not_bool()),
    case("supermask.dynamic_scaling", lambda v: randjax.supermask(dynamic_scaling=v),
         not_bool()),
    case("supermask.train_others", lambda v: randjax.supermask(train_others=v), not_bool()),
    case("supermask.weight_init", lambda v: randjax.supermask(weight_init=v),
         not_callable(none_ok=True, names=INITIALIZERS)),
    case("supermask.store_weights", lambda v: randjax.supermask(
        weight_init="signed_constant", store_weights=v), not_bool()),
    # slot_machine
    case("slot_machine.k", lambda v: randjax.slot_machine(v), not_int(minimum=2)),
    case("slot_machine.selection", lambda v: randjax.slot_machine(4, selection=v),
         not_choice(("greedy", "sample"))),
    case("slot_machine.eval_selection", lambda v: randjax.slot_machine(4, eval_selection=v),
         not_choice(("greedy", "sample"), none_ok=True)),
    case("slot_machine.init", lambda v: randjax.slot_machine(4, init=v),
         not_choice(("official", "paper"))),
    case("slot_machine.filter", lambda v: randjax.slot_machine(4, filter=v), not_callable()),
    case("slot_machine.shared_options", lambda v: randjax.slot_machine(4, shared_options=v),
         not_bool()),
    case("slot_machine.train_others", lambda v: randjax.slot_machine(4, train_others=v),
         not_bool()),
    case("slot_machine.store_weights", lambda v: randjax.slot_machine(4, store_weights=v),
         not_bool()),
    # laperm, lookahead
    case("laperm.inner", lambda v: randjax.laperm(v), not_callable()),
    case("laperm.sync_period", lambda v: randjax.laperm(optax.sgd(0.1), v),
         not_int(minimum=1)),
    case("laperm.filter", lambda v: randjax.laperm(optax.sgd(0.1), filter=v),
         not_callable(none_ok=True)),
    case("laperm.include_1d", lambda v: randjax.laperm(optax.sgd(0.1), include_1d=v),
         not_bool()),
    case("laperm.reset_inner_state",
         lambda v: randjax.laperm(optax.sgd(0.1), reset_inner_state=v), not_bool()),
    case("lookahead.fast", lambda v: randjax.lookahead(v), not_callable()),
    case("lookahead.sync_period", lambda v: randjax.lookahead(optax.sgd(0.1), v),
         not_int(minimum=1)),
    case("lookahead.step_size", lambda v: randjax.lookahead(optax.sgd(0.1), 5, v),
         not_real(0.0, 1.0)),
    # masked, pruning
    case("masked.masks", lambda v: randjax.masked(v), NOT_MASKS),
    case("pruning.masks_at_density.density",
         lambda v: pruning.masks_at_density(SCORES, v), NOT_DENSITY),
    case("pruning.masks_at_density.scope",
         lambda v: pruning.masks_at_density(SCORES, 0.5, scope=v), not_choice(pruning.SCOPES)),
    case("pruning.masks_at_density.count",
         lambda v: pruning.masks_at_density(SCORES, 0.5, count=v), not_choice(pruning.COUNTS)),
    case("pruning.prune_remaining.fraction",
         lambda v: pruning.prune_remaining(SCORES, MASKS, v), not_real(0.0, 1.0, high_ok=False)),
    case("pruning.select.filter", lambda v: pruning.select(SCORES, filter=v), not_callable()),
    case("pruning.select.exclude", lambda v: pruning.select(SCORES, exclude=v),
         st.one_of(st.integers(), st.none(), st.lists(st.integers(), min_size=1), TEXT)),
    case("structured.random_orders.n_units", lambda v: structured.random_orders(v),
         not_int(minimum=1)),
    case("structured.random_orders.rounds", lambda v: structured.random_orders(4, rounds=v),
         not_int(minimum=1)),
    case("structured.random_orders.seed", lambda v: structured.random_orders(4, seed=v),
         not_int(minimum=0)),
    # tom
    case("tom.density", lambda v: tom.tom(v), NOT_DENSITY),
    case("tom.logit_init", lambda v: tom.tom(0.5, logit_init=v), not_real()),
    case("tom.scope", lambda v: tom.tom(0.5, scope=v), not_choice(pruning.SCOPES)),
    case("tom.filter", lambda v: tom.tom(0.5, filter=v), not_callable()),
    case("tom.bits", lambda v: tom.tom(0.5, bits=v), not_choice(masks.BITS)),
    case("tom_gradients.clip", lambda v: tom.tom_gradients(clip=v),
         not_real(0.0, low_ok=False, none_ok=True)),
    case("tom_gradients.penalty", lambda v: tom.tom_gradients(penalty=v),
         not_choice(tom.PENALTIES)),
    case("tom_gradients.penalty_scale", lambda v: tom.tom_gradients(penalty_scale=v),
         not_real(0.0)),
    case("tom_gradients.divide_by_weight", lambda v: tom.tom_gradients(divide_by_weight=v),
         not_bool()),
    case("tom_gradients.bound", lambda v: tom.tom_gradients(bound=v),
         not_real(0.0, low_ok=False)),
    # masks
    case("topk_mask.density", lambda v: masks.topk_mask(VECTOR, v), NOT_DENSITY),
    case("topk_mask.rounding", lambda v: masks.topk_mask(VECTOR, 0.5, rounding=v),
         not_choice(masks.ROUNDINGS)),
    case("bernoulli_mask.gradient", lambda v: masks.bernoulli_mask(KEY, VECTOR, gradient=v),
         not_choice(masks.GRADIENTS)),
    case("bernoulli_mask.bits", lambda v: masks.bernoulli_mask(KEY, VECTOR, bits=v),
         not_choice(masks.BITS)),
    # initializers
    case("init.get.name", lambda v: init.get(v), not_callable(names=INITIALIZERS),
         "initializer"),
    case("init.get.density", lambda v: init.get("scaled_kaiming_normal", density=v),
         NOT_DENSITY),
    case("init.scaled_signed_constant.density", init.scaled_signed_constant, NOT_DENSITY),
    case("init.resolve.weight_init", lambda v: init.resolve(v, "weight_init"),
         not_callable(none_ok=True, names=INITIALIZERS)),
    # models
    case("models.get.name", lambda v: models.get(v),
         st.one_of(TEXT.filter(lambda s: s not in models.REGISTRY), st.integers(),
                   st.none(), st.lists(st.just("conv4"))), "model"),
    case("models.get.num_classes", lambda v: models.get("conv4", num_classes=v),
         not_int(minimum=1)),
    case("models.get.width", lambda v: models.get("conv4", width=v),
         not_real(0.0, low_ok=False)),
    case("models.get.use_bias", lambda v: models.get("conv4", use_bias=v), not_bool()),
    case("models.get.batch_norm", lambda v: models.get("conv4", batch_norm=v), not_bool()),
    case("models.get.bn_affine", lambda v: models.get("conv4", bn_affine=v), not_bool()),
    case("models.get.fast_conv_grad", lambda v: models.get("conv4", fast_conv_grad=v),
         not_bool()),
    case("models.get.bn_momentum", lambda v: models.get("conv4", bn_momentum=v),
         not_real(0.0, 1.0)),
    case("models.get.bn_epsilon", lambda v: models.get("conv4", bn_epsilon=v),
         not_real(0.0, low_ok=False)),
    case("models.get.dropout", lambda v: models.get("conv4", dropout=v),
         st.one_of(not_real(0.0, 1.0, high_ok=False),
                   st.tuples(st.floats(0.0, 0.9), st.floats(0.0, 0.9)))),
    case("models.get.kernel_init", lambda v: models.get("conv4", kernel_init=v),
         not_callable()),
    case("models.get.bias_init", lambda v: models.get("conv4", bias_init=v), not_callable()),
    case("models.get.bn_scale_init", lambda v: models.get("vgg19", bn_scale_init=v),
         not_callable()),
    case("models.get.dtype", lambda v: models.get("conv4", dtype=v), NOT_DTYPE),
    case("models.get.resnet_use_bias", lambda v: models.get("resnet20", use_bias=v),
         not_bool(none_ok=True), "use_bias"),
    case("models.get.shortcut", lambda v: models.get("resnet20", shortcut=v),
         not_choice(("projection", "padding"))),
    # data
    case("data.load.name", lambda v: data.load(v),
         st.one_of(st.integers(), st.none(), st.booleans(), st.floats())),
    case("data.load.data_dir", lambda v: data.load("digits", data_dir=v), NOT_MISSING_DIR),
    case("data.load.val_fraction", lambda v: data.load("digits", val_fraction=v),
         not_real(0.0, 1.0, high_ok=False)),
    case("data.load.seed", lambda v: data.load("digits", seed=v), not_int(minimum=0)),
    case("data.load.normalize", lambda v: data.load("digits", normalize=v),
         not_choice(data.NORMALIZATIONS)),
    case("data.load.num_classes", lambda v: data.load("digits", num_classes=v),
         not_int(minimum=1, none_ok=True)),
    case("data.augment.crop_padding", lambda v: data.augment(KEY, IMAGES, crop_padding=v),
         not_int(minimum=0)),
    case("data.augment.flip", lambda v: data.augment(KEY, IMAGES, flip=v), not_bool()),
    case("data.shuffle_batches.batch_size", lambda v: data.shuffle_batches(KEY, 10, v),
         not_int(minimum=1)),
    case("data.shuffle_batches.num_examples", lambda v: data.shuffle_batches(KEY, v, 2),
         not_int(minimum=0)),
]


@contextlib.contextmanager
def no_jax():
    """Any JAX primitive bound inside fails the test (jit disabled, so none is cached)."""
    original = Primitive.bind

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"JAX ran {self.name!r} before the arguments were checked")

    Primitive.bind = refuse
    try:
        with jax.disable_jit():
            yield
    finally:
        Primitive.bind = original


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data())
def test_bad_argument_is_refused_by_name_before_any_computation(case, data):
    value = data.draw(case.invalid, label=case.name)
    with no_jax(), pytest.raises((ValueError, TypeError)) as info:
        case.call(value)
    message = str(info.value)
    assert re.search(rf"\b{re.escape(case.name)}\b", message), message


def test_no_jax_catches_a_computation():
    with no_jax(), pytest.raises(AssertionError, match="before the arguments were checked"):
        jnp.ones(3) + 1
    with no_jax(), pytest.raises(AssertionError):
        jax.jit(lambda x: x * 2)(VECTOR)  # even a jitted call compiled before
    assert float((jnp.ones(1) + 1)[0]) == 2.0  # bind restored


def test_valid_calls_pass_the_watch():
    # The watch only refuses computations: the same constructors with valid
    # arguments build without running JAX.
    with no_jax():
        randjax.edge_popup(0.5)
        randjax.slot_machine(2)
        randjax.laperm(optax.sgd(0.1), 3)
        models.get("resnet20", use_bias=None, dropout=0.1, bn_momentum=1 - 1e-9)
        init.get("scaled_signed_constant", density=0.5)
