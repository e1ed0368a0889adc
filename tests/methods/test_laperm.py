"""LaPerm as an optax transformation: sync schedule, exact permutation invariant,
composition, jit, 8 devices, inner state, fit, argument checks, pruned and
single-value starts, and save_permuted."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax
from randjax import apply_updates, data, export, models
from randjax.methods import laperm as laperm_lib
from randjax.methods.laperm import LaPermState, laperm, laperm_states
from randjax.permute import ranks


@functools.cache
def _digits():
    return data.load("digits", val_fraction=0.0)


@functools.cache
def _lenet_params(seed: int = 0):
    model = models.get("lenet300_100")
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)))["params"]


def _optax_apply(params, updates, opt_state):
    del opt_state
    return optax.apply_updates(params, updates)


def _train(tx, steps, *, params=None, apply=apply_updates, batch=64, jit=True, snapshot=None):
    """A small loop of our own on digits; returns (params, opt_state, losses).

    With ``snapshot=n`` it also returns the (params, opt_state) after step n.
    """
    model, init_params = _lenet_params()
    params = init_params if params is None else params
    x, y = _digits().train.x, _digits().train.y

    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return apply(params, updates, opt_state), opt_state, loss

    step = jax.jit(step) if jit else step
    opt_state, losses = tx.init(params), []
    for i in range(steps):
        lo = (i * batch) % (len(y) - batch)
        params, opt_state, loss = step(params, opt_state, x[lo:lo + batch], y[lo:lo + batch])
        losses.append(float(loss))
        if i + 1 == snapshot:
            snap = params, opt_state
    if snapshot is not None:
        return params, opt_state, losses, snap
    return params, opt_state, losses


def _vectors(x):
    x = np.asarray(x)
    return np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)


def _is_permutation_of(w, w0) -> bool:
    """Every weight vector of ``w`` holds exactly (bitwise) the values of ``w0``'s."""
    a = np.sort(_vectors(w), axis=1).view(np.int32)
    b = np.sort(_vectors(w0), axis=1).view(np.int32)
    return np.array_equal(a, b)


def _kernels(params):
    return {k: v["kernel"] for k, v in params.items()}


# --------------------------------------------------------------------------- #
# The invariant, on digits with LeNet-300-100.

def test_exact_invariant_after_training_on_digits():
    _, p0 = _lenet_params()
    after, state_after, losses, (params, state) = _train(
        laperm(optax.adam(1e-3), 7), 29, snapshot=28)
    assert bool(state.synced) and int(state.count) == 28
    for name, w in _kernels(params).items():
        assert _is_permutation_of(w, p0[name]["kernel"]), name
        assert not np.array_equal(w, p0[name]["kernel"]), f"{name} never reconnected"
    # Biases are skipped by default: trained by Adam, not permuted.
    assert not _is_permutation_of(params["Dense_0"]["bias"], p0["Dense_0"]["bias"])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # One more (non-sync) step leaves the permutation: the check discriminates.
    assert not bool(state_after.synced)
    assert not _is_permutation_of(after["Dense_1"]["kernel"], p0["Dense_1"]["kernel"])


def test_sync_takes_the_ranking_of_the_inner_step():
    _, p0 = _lenet_params()
    inner = optax.sgd(0.5)
    tx = laperm(inner, 1)
    grads = jax.tree.map(lambda w: jax.random.normal(jax.random.key(3), w.shape), p0)
    updates, state = jax.jit(tx.update)(grads, tx.init(p0), p0)
    moved = optax.apply_updates(p0, inner.update(grads, inner.init(p0), p0)[0])
    new = apply_updates(p0, updates, state)
    for name in p0:
        w, w0, m = (np.asarray(t[name]["kernel"]) for t in (new, p0, moved))
        np.testing.assert_array_equal(w, np.take_along_axis(np.sort(w0, 0), ranks(m, 0), 0))
        np.testing.assert_array_equal(new[name]["bias"], moved[name]["bias"])


def test_randjax_apply_updates_is_exact_where_optax_rounds():
    tiny = 2.0 ** -30
    params = {"kernel": jnp.array([[3.0, 1.0], [tiny, 2.0]])}
    tx = laperm(optax.sgd(1.0), 1)
    grads = {"kernel": jnp.array([[4.0, 0.0], [0.0, 0.0]])}   # swaps column 0
    updates, state = tx.update(grads, tx.init(params), params)
    rounded = optax.apply_updates(params, updates)["kernel"]
    assert float(rounded[0, 0]) == 0.0                        # 3 + (tiny - 3) in float32
    exact = apply_updates(params, updates, state)["kernel"]
    np.testing.assert_array_equal(exact, [[tiny, 1.0], [3.0, 2.0]])
    np.testing.assert_allclose(rounded, exact, atol=1e-6)


def test_plain_optax_apply_updates_keeps_invariant_up_to_rounding():
    _, p0 = _lenet_params()
    params, _, _ = _train(laperm(optax.adam(1e-3), 5), 10, apply=_optax_apply)
    for name, w in _kernels(params).items():
        np.testing.assert_allclose(np.sort(_vectors(w), 1),
                                   np.sort(_vectors(p0[name]["kernel"]), 1), atol=1e-6)


def test_pruned_single_value_init_permutes_zeros_with_ties():
    _, p0 = _lenet_params()
    p0 = laperm_lib.shared_value(laperm_lib.random_prune(jax.random.key(1), p0, 0.3), 0.05)
    params, state, _ = _train(laperm(optax.adam(1e-2), 4, include_1d=True), 12, params=p0)
    assert bool(state.synced)
    for name in p0:
        for leaf in ("kernel", "bias"):
            assert _is_permutation_of(params[name][leaf], p0[name][leaf]), (name, leaf)
    moved = np.asarray(params["Dense_1"]["kernel"]) != np.asarray(p0["Dense_1"]["kernel"])
    assert moved.any(), "no zero was reconnected"


# --------------------------------------------------------------------------- #
# Sync periods and schedules.

def _sync_steps(tx, steps, params=None):
    params = {"kernel": jnp.arange(6.0).reshape(3, 2)} if params is None else params
    state, out = tx.init(params), []
    update = jax.jit(tx.update)
    for n in range(1, steps + 1):
        grads = jax.tree.map(jnp.ones_like, params)
        _, state = update(grads, state, params)
        if bool(state.synced):
            out.append(n)
    return out


def test_sync_period_int_one_and_large():
    assert _sync_steps(laperm(optax.sgd(0.1), 3), 10) == [3, 6, 9]
    assert _sync_steps(laperm(optax.sgd(0.1), 1), 4) == [1, 2, 3, 4]
    assert _sync_steps(laperm(optax.sgd(0.1), 10**6), 5) == []


def test_large_period_is_the_inner_optimizer():
    # Between syncs the updates are the inner optimizer's, bitwise (eager:
    # the same operations run) ...
    _, p0 = _lenet_params()
    inner, tx = optax.adam(1e-3), laperm(optax.adam(1e-3), 10**6)
    grads = jax.tree.map(lambda w: jnp.cos(w * 100.0), p0)
    inner_updates, _ = inner.update(grads, inner.init(p0), p0)
    updates, state = tx.update(grads, tx.init(p0), p0)
    chex.assert_trees_all_equal(updates, inner_updates)
    assert not bool(state.synced)
    # ... and so are the following ones.
    updates, state = tx.update(grads, state, p0)
    chex.assert_trees_all_equal(updates, inner.update(
        grads, inner.update(grads, inner.init(p0), p0)[1], p0)[0])


def test_sync_period_schedule():
    # Called with the number of updates before this one (optax's convention).
    schedule = lambda count: jnp.where(count < 6, 2, 5)
    assert _sync_steps(laperm(optax.sgd(0.1), schedule), 16) == [2, 4, 6, 10, 15]
    float_schedule = optax.piecewise_constant_schedule(2.0, {6: 2.5})   # 2.0, then 5.0
    assert _sync_steps(laperm(optax.sgd(0.1), float_schedule), 16) == [2, 4, 6, 10, 15]
    # A period below 1 cannot raise under jit: it syncs every step.
    assert _sync_steps(laperm(optax.sgd(0.1), lambda c: 0), 3) == [1, 2, 3]


# --------------------------------------------------------------------------- #
# Composition, jit, inner state.

def test_composes_in_chain_and_nested_states():
    _, p0 = _lenet_params()
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.chain(laperm(optax.adam(1e-3), 4)))
    params, state, _ = _train(tx, 8)
    assert len(laperm_states(state)) == 1
    for name, w in _kernels(params).items():
        assert _is_permutation_of(w, p0[name]["kernel"]), name
    # With hyperparameters injected into the inner optimizer.
    inner = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    params, state, _ = _train(laperm(inner, 4), 8)
    rate = laperm_states(state)[0].inner_state.hyperparams["learning_rate"]
    assert float(rate) == np.float32(1e-3)
    assert _is_permutation_of(params["Dense_2"]["kernel"], p0["Dense_2"]["kernel"])


def test_apply_updates_without_laperm_is_optax():
    _, p0 = _lenet_params()
    tx = optax.adam(1e-2)
    grads = jax.tree.map(jnp.ones_like, p0)
    updates, state = tx.update(grads, tx.init(p0), p0)
    chex.assert_trees_all_equal(apply_updates(p0, updates, state),
                                optax.apply_updates(p0, updates))
    assert laperm_states(state) == []


def test_jit_and_eager_agree():
    eager, s1, _ = _train(laperm(optax.adam(1e-3), 2), 4, jit=False)
    jitted, s2, _ = _train(laperm(optax.adam(1e-3), 2), 4, jit=True)
    chex.assert_trees_all_close(eager, jitted, atol=1e-6)
    assert bool(s1.synced) and bool(s2.synced)
    for name in eager:
        assert _is_permutation_of(eager[name]["kernel"], jitted[name]["kernel"])


def test_inner_state_is_kept_across_syncs():
    _, p0 = _lenet_params()
    inner = optax.adam(1e-3)
    grads = jax.tree.map(lambda w: jnp.full(w.shape, 0.1), p0)
    kept = laperm(inner, 1)
    reset = laperm(inner, 2, reset_inner_state=True)
    s_kept, s_reset = kept.init(p0), reset.init(p0)
    _, s_kept = kept.update(grads, s_kept, p0)
    _, s_reset = reset.update(grads, s_reset, p0)   # step 1: no sync, no reset
    expect = inner.update(grads, inner.init(p0), p0)[1]
    chex.assert_trees_all_equal(s_kept.inner_state, expect)
    chex.assert_trees_all_equal(s_reset.inner_state, expect)
    _, s_kept = kept.update(grads, s_kept, p0)
    _, s_reset = reset.update(grads, s_reset, p0)   # step 2: sync and reset
    assert int(s_kept.inner_state[0].count) == 2
    assert float(jnp.abs(s_kept.inner_state[0].mu["Dense_0"]["kernel"]).max()) > 0
    chex.assert_trees_all_equal(s_reset.inner_state, inner.init(p0))


def test_state_layout():
    _, p0 = _lenet_params()
    state = laperm(optax.sgd(0.1), 5).init(p0)
    assert isinstance(state, LaPermState)
    assert state.sorted0["Dense_0"]["bias"] is None and state.target["Dense_0"]["bias"] is None
    np.testing.assert_array_equal(state.sorted0["Dense_0"]["kernel"],
                                  np.sort(p0["Dense_0"]["kernel"], axis=0))
    assert state.count.dtype == jnp.int32 and not bool(state.synced)


# --------------------------------------------------------------------------- #
# Argument checks.

@pytest.mark.parametrize("period", [0, -3, 1.5, True, "20", None, np.float32(20)])
def test_bad_sync_period_raises(period):
    with pytest.raises(ValueError, match="sync_period"):
        laperm(optax.adam(1e-3), period)


def test_bad_arguments_raise():
    assert laperm(optax.sgd(0.1), np.int64(5))    # NumPy ints are ints
    with pytest.raises(ValueError, match="inner"):
        laperm("adam", 20)
    with pytest.raises(ValueError, match="filter"):
        laperm(optax.sgd(0.1), 20, filter="kernel")
    for flag in ("include_1d", "reset_inner_state"):
        with pytest.raises(ValueError, match=flag):
            laperm(optax.sgd(0.1), 20, **{flag: 1})
    tx = laperm(optax.sgd(0.1), 2)
    with pytest.raises(ValueError, match="selects no leaf"):
        tx.init({"bias": jnp.ones(3)})
    params = {"kernel": jnp.ones((3, 2))}
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="structure"):
        tx.update({"w": jnp.ones((3, 2))}, state, {"w": jnp.ones((3, 2))})
    with pytest.raises(ValueError, match="shape"):
        tx.update({"kernel": jnp.ones((4, 2))}, state, {"kernel": jnp.ones((4, 2))})
    with pytest.raises(ValueError, match="floating"):
        laperm(optax.sgd(0.1), 2).init({"kernel": jnp.ones((3, 2), jnp.int32)})


def test_init_random_prune_and_shared_value():
    _, p0 = _lenet_params()
    pruned = laperm_lib.random_prune(jax.random.key(0), p0, 0.1)
    kept = {k: float((pruned[k]["kernel"] != 0).mean()) for k in p0}
    assert abs(kept["Dense_0"] - 0.8) < 0.02 and abs(kept["Dense_1"] - 0.1) < 0.02
    assert np.array_equal(pruned["Dense_0"]["bias"], p0["Dense_0"]["bias"])
    assert not np.signbit(np.asarray(pruned["Dense_1"]["kernel"])[
        np.asarray(pruned["Dense_1"]["kernel"]) == 0]).any()       # +0.0, not -0.0
    same = np.asarray(pruned["Dense_1"]["kernel"]) != 0
    np.testing.assert_array_equal(np.asarray(pruned["Dense_1"]["kernel"])[same],
                                  np.asarray(p0["Dense_1"]["kernel"])[same])
    dense_first = laperm_lib.random_prune(jax.random.key(0), p0, 0.9)    # max(0.9, 0.8)
    assert abs(float((dense_first["Dense_0"]["kernel"] != 0).mean()) - 0.9) < 0.02
    flat = laperm_lib.random_prune(jax.random.key(0), p0, 0.1, input_density=0.0)
    assert abs(float((flat["Dense_0"]["kernel"] != 0).mean()) - 0.1) < 0.02
    named = laperm_lib.random_prune(jax.random.key(0), p0, 0.1, input_layer="Dense_2")
    assert abs(float((named["Dense_0"]["kernel"] != 0).mean()) - 0.1) < 0.02
    assert float((named["Dense_2"]["kernel"] != 0).mean()) > 0.7
    single = laperm_lib.shared_value(pruned, 0.01)
    kernel = single["Dense_1"]["kernel"]
    assert set(np.unique(np.asarray(kernel)).tolist()) == {0.0, np.float32(0.01)}
    np.testing.assert_array_equal(kernel != 0, pruned["Dense_1"]["kernel"] != 0)
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="density"):
            laperm_lib.random_prune(jax.random.key(0), p0, bad)
    with pytest.raises(ValueError, match="input_density"):
        laperm_lib.random_prune(jax.random.key(0), p0, 0.5, input_density=2.0)
    with pytest.raises(ValueError, match="input_layer"):
        laperm_lib.random_prune(jax.random.key(0), p0, 0.5, input_layer="Conv_0")
    with pytest.raises(ValueError, match="value"):
        laperm_lib.shared_value(p0, float("nan"))


# --------------------------------------------------------------------------- #
# randjax.fit and 8 devices.

def test_fit_keeps_the_invariant_bitwise():
    ds = data.load("digits")                      # 1294 training images
    result = randjax.fit(models.get("lenet300_100"), ds, laperm(optax.adam(1e-3), 20),
                         epochs=1, batch_size=64, drop_remainder=True, progress=False)
    assert result.summary["steps"] == 20          # 1294 // 64: the last step syncs
    fit_init = randjax.train.init_state(models.get("lenet300_100"), randjax.dense(),
                                        optax.sgd(0.1), ds.input_shape,
                                        jax.random.split(jax.random.key(0), 3)[0])
    for name, w in _kernels(result.state.trainable).items():
        w0 = fit_init.trainable[name]["kernel"]
        assert _is_permutation_of(w, w0), name
        assert not np.array_equal(w, w0)


MULTIDEVICE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from randjax import data, models
    from randjax import apply_updates, laperm
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    ds = data.load("digits", val_fraction=0.0)
    model = models.get("lenet300_100")
    p0 = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    tx = laperm(optax.adam(1e-3), 3)

    def step(params, state, x, y):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), y).mean()
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return apply_updates(params, updates, state), state

    def run(param_spec, devices):
        sub = jax.sharding.Mesh(np.asarray(devices), ("data",))
        put = lambda t, spec: jax.device_put(t, NamedSharding(sub, spec))
        params = jax.tree.map(lambda w: put(w, param_spec(w)), p0)
        state = tx.init(params)
        jstep = jax.jit(step)
        for i in range(6):
            x = put(ds.train.x[64 * i:64 * (i + 1)], P("data"))
            y = put(ds.train.y[64 * i:64 * (i + 1)], P("data"))
            params, state = jstep(params, state, x, y)
        return params, state

    rep, state = run(lambda w: P(), jax.devices())        # data parallel, replicated
    # Kernels sharded over their output units (columns): sorts stay per column.
    # (300 and 100 output units divide over 4 devices, not 8.)
    cols, _ = run(lambda w: P(None, "data") if w.ndim == 2 and w.shape[1] % 4 == 0
                  else P(), jax.devices()[:4])
    assert bool(state.synced)
    assert len(rep["Dense_0"]["kernel"].sharding.device_set) == 8
    assert cols["Dense_1"]["kernel"].sharding.spec == P(None, "data")
    vec = lambda w: np.sort(np.asarray(w), axis=0).view(np.int32)
    for name in p0:
        for params in (rep, cols):
            assert np.array_equal(vec(params[name]["kernel"]), vec(p0[name]["kernel"])), name
        np.testing.assert_allclose(rep[name]["kernel"], cols[name]["kernel"], atol=1e-5)
        assert not np.array_equal(rep[name]["kernel"], p0[name]["kernel"])
    print("OK")
""")


def test_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MULTIDEVICE], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]


def test_synced_params_projects_onto_permutations_of_theta0():
    from randjax.methods.laperm import synced_params
    _, params = _lenet_params()
    tx = laperm(optax.adam(1e-2), 1000, include_1d=True)
    trained, state, _ = _train(tx, 5)
    synced = synced_params(trained, state)
    for leaf0, leaf, raw in zip(jax.tree.leaves(params), jax.tree.leaves(synced),
                                jax.tree.leaves(trained)):
        cols = lambda x: np.asarray(x).reshape(-1, 1 if x.ndim == 1 else x.shape[-1])
        np.testing.assert_array_equal(np.sort(cols(leaf), 0), np.sort(cols(leaf0), 0))
        if leaf.ndim == 2:  # (the zero biases tie: ranks by position there)
            np.testing.assert_array_equal(ranks(cols(leaf), 0), ranks(cols(raw), 0))
    # jit gives the same; no LaPerm state: params unchanged.
    jax.tree.map(np.testing.assert_array_equal, jax.jit(synced_params)(trained, state), synced)
    assert synced_params(trained, optax.adam(1e-3).init(trained)) is trained


# ---------------------------------------------------------------------------
# LaPerm: init key + per-vector permutations.


def _lenet_with_biases(width=1.0):
    return randjax.models.get("lenet300_100", use_bias=True, width=width,
                              kernel_init=randjax.init.get("kaiming_uniform"))


def _permuted(params, seed=0):
    """Every vector (column of reshape(-1, out); 1-D: the leaf) randomly permuted."""
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for i, leaf in enumerate(leaves):
        cols = np.asarray(leaf).reshape(-1, 1 if leaf.ndim == 1 else leaf.shape[-1])
        rng = np.random.default_rng(seed + i)
        perm = np.stack([rng.permutation(cols.shape[0]) for _ in range(cols.shape[1])], 1)
        out.append(jnp.asarray(np.take_along_axis(cols, perm, 0).reshape(leaf.shape)))
    return treedef.unflatten(out)


def test_save_permuted_round_trip_smallest_dtype_and_lehmer(tmp_path):
    model, key = _lenet_with_biases(), jax.random.key(5)
    params0 = model.init(key, jnp.zeros((1, 28, 28, 1)))["params"]
    params = _permuted(jax.tree.map(lambda b: b + 0.1 * jnp.arange(b.size).reshape(b.shape)
                                    if b.ndim == 1 else b, params0))
    # Biases of the init are zeros; give them values to permute (as a different init).
    with pytest.raises(ValueError, match=r"\['Dense_0'\]\['bias'\] is not, per weight"):
        laperm_lib.save_permuted(tmp_path / "x", params, model, key, (28, 28, 1),
                             include_1d=True)
    params = _permuted(params0)
    x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
    logits = lambda p: np.asarray(jax.jit(model.apply)({"params": p}, x))
    sizes = {}
    for lehmer in (False, True):
        info = laperm_lib.save_permuted(tmp_path / f"lp{lehmer}", params, model, key,
                                    (28, 28, 1), include_1d=True, lehmer=lehmer)
        rebuilt = export.load(info.path)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(
            np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32)), rebuilt, params)
        np.testing.assert_array_equal(logits(rebuilt), logits(params))
        assert info.float32_bytes == 4 * 266_610
        sizes[lehmer] = info.bytes
    with np.load(tmp_path / "lpFalse.npz") as data:
        dtypes = {name: str(data[name].dtype) for name in data.files
                  if name.startswith("perm_")}
    # Leaves in flattening order: Dense_0 bias (300), kernel (784 x 300), Dense_1
    # bias (100), kernel (300 x 100), Dense_2 bias (10), kernel (100 x 10).
    assert dtypes == {"perm_0": "uint16", "perm_1": "uint16", "perm_2": "uint8",
                      "perm_3": "uint16", "perm_4": "uint8", "perm_5": "uint8"}
    # Indices: 2 bytes per weight of the big layers (deflate takes some of the
    # unused high bits); Lehmer codes: log2(n!) bits per vector, incompressible.
    ratio = {lehmer: 4 * 266_610 / size for lehmer, size in sizes.items()}
    assert 2.0 < ratio[False] < 3.2 and 3.5 < ratio[True] < 4.6, ratio


def test_index_dtype_is_the_smallest_that_holds_the_positions():
    assert [str(laperm_lib._index_dtype(n)) for n in (1, 256, 257, 65_536, 65_537)] == [
        "uint8", "uint8", "uint16", "uint16", "uint32"]


def test_save_permuted_after_laperm_fit_gives_identical_logits(tmp_path):
    digits = randjax.data.load("digits", val_fraction=0.0)
    model = _lenet_with_biases(width=0.25)
    tx = randjax.laperm(optax.adam(1e-3), 7, include_1d=True)
    result = randjax.fit(model, digits, tx, epochs=1, batch_size=64, seed=3,
                         progress=False)
    state = result.state
    assert int(state.step) % 7 != 0  # the last step was not a sync step
    with pytest.raises(ValueError, match="synced_params"):
        laperm_lib.save_permuted(tmp_path / "a", state.trainable, model,
                             randjax.train.model_key(3), (8, 8, 1), include_1d=True)
    synced = randjax.methods.laperm.synced_params(state.trainable, state.opt_state)
    info = laperm_lib.save_permuted(tmp_path / "fit", synced, model,
                                randjax.train.model_key(3), (8, 8, 1), include_1d=True)
    x = jnp.asarray(digits.test.x)
    logits = lambda p: np.asarray(model.apply({"params": p}, x))
    np.testing.assert_array_equal(logits(export.load(info.path)), logits(synced))
    # Only kernels permuted: the biases are stored as they are.
    kernels_only = randjax.laperm(optax.adam(1e-3), 7)
    state = randjax.fit(model, digits, kernels_only, epochs=1, batch_size=64, seed=3,
                        progress=False).state
    synced = randjax.methods.laperm.synced_params(state.trainable, state.opt_state)
    path = tmp_path / "kernels.npz"
    laperm_lib.save_permuted(path, synced, model, randjax.train.model_key(3), (8, 8, 1),
                         lehmer=True)
    rebuilt = export.load(path)
    jax.tree.map(np.testing.assert_array_equal, rebuilt, synced)
    with np.load(path) as data:
        assert {n.split("_")[0] for n in data.files} == {"spec", "init", "lehmer", "value"}


def test_save_permuted_errors(tmp_path):
    model, key = _lenet_with_biases(width=0.25), jax.random.key(0)
    params = model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    save = lambda p, m=model, k=key, shape=(8, 8, 1), **kw: laperm_lib.save_permuted(
        tmp_path / "e", p, m, k, shape, **kw)
    save(params)  # the initial weights are a permutation of themselves
    with pytest.raises(ValueError, match="wrong model, key or input_shape"):
        save(params, k=jax.random.key(1))
    moved = jax.tree.map(lambda w: w * 1.0001, params)
    with pytest.raises(ValueError, match=r"\['Dense_0'\]\['kernel'\] is not, per weight"):
        save(moved)
    with pytest.raises(ValueError, match="structure of the model's initial parameters"):
        save({"Dense_0": params["Dense_0"]})
    with pytest.raises(ValueError, match="is float32"):
        save(params, shape=(4, 4, 1))
    with pytest.raises(ValueError, match="zoo model"):
        save(params, m=object())
    custom = randjax.models.get("lenet300_100", width=0.25,
                                kernel_init=jax.nn.initializers.normal(0.1))
    with pytest.raises(ValueError, match="kernel_init is not a registered initializer"):
        save(params, m=custom)
    with pytest.raises(ValueError, match="filter must be a callable"):
        save(params, filter=3)
    with pytest.raises(ValueError, match="lehmer must be a Python bool"):
        save(params, lehmer=1)


@pytest.mark.parametrize("schedule, message", [
    (lambda count: jnp.nan, "got nan at count 0"),
    (lambda count: jnp.where(count >= 1000, jnp.inf, 5.0), r"got Array\(inf.* at count 1000"),
    (lambda count: jnp.ones(2), r"got Array\(\[1., 1.\].* at count 0"),
    (lambda count: "20", "got '20' at count 0"),
    (lambda count: True, "got True at count 0"),
])
def test_sync_period_schedule_with_non_finite_values_is_refused_when_built(schedule, message):
    with pytest.raises(ValueError, match=r"laperm: sync_period schedule\(count\) must return "
                                         r"a finite real scalar, " + message):
        laperm(optax.sgd(0.1), schedule)


def test_sync_period_schedule_checked_after_the_other_arguments():
    calls = []
    with pytest.raises(ValueError, match="include_1d"):
        laperm(optax.sgd(0.1), lambda count: calls.append(count) or 2, include_1d="no")
    assert calls == []


# --------------------------------------------------------------------------- #
# output_axis: Equinox / PyTorch layouts (out, in, ...)
# --------------------------------------------------------------------------- #

def _eqx_weights():
    eqx = pytest.importorskip("equinox")
    k1, k2 = jax.random.split(jax.random.key(3))
    return {"linear": eqx.nn.Linear(20, 7, key=k1).weight,       # (7, 20)
            "conv": eqx.nn.Conv2d(3, 5, 3, key=k2).weight}       # (5, 3, 3, 3)


def _per_unit_sorted(w):
    w = np.asarray(w)
    return np.sort(w.reshape(w.shape[0], -1), axis=1)


def test_output_axis_0_keeps_each_equinox_unit_a_permutation_of_its_initial_weights():
    params = _eqx_weights()
    assert params["linear"].shape == (7, 20) and params["conv"].shape == (5, 3, 3, 3)
    tx = laperm(optax.sgd(0.5), sync_period=2, output_axis=0)
    state = tx.init(params)
    assert state.output_axis == 0 and state.layout == laperm_lib.OutputAxis(0)
    target = jax.tree.map(lambda w: jax.random.normal(jax.random.key(9), w.shape), params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p))(params)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates, state), state

    p = params
    for _ in range(6):
        p, state = step(p, state)
    assert bool(state.synced)
    for name, w0 in params.items():
        w = np.asarray(p[name])
        np.testing.assert_array_equal(_per_unit_sorted(w), _per_unit_sorted(w0))
        assert not np.array_equal(w, np.asarray(w0)), name    # the weights moved
    # The default layout would mix units: its vectors are the last axis.
    moved = jax.tree.map(lambda w: w + 0.3 * jax.random.normal(jax.random.key(1), w.shape),
                         params)
    synced = laperm_lib.synced_params(moved, state)
    for name, w0 in params.items():
        np.testing.assert_array_equal(_per_unit_sorted(synced[name]), _per_unit_sorted(w0))


def test_output_axis_0_matches_the_default_on_transposed_weights():
    params = _eqx_weights()
    flax_layout = {k: jnp.moveaxis(w, 0, -1) for k, w in params.items()}
    grads = jax.tree.map(lambda w: jax.random.normal(jax.random.key(4), w.shape), params)
    flax_grads = {k: jnp.moveaxis(g, 0, -1) for k, g in grads.items()}
    tx0, tx = laperm(optax.sgd(1.0), 1, output_axis=0), laperm(optax.sgd(1.0), 1)
    u0, s0 = tx0.update(grads, tx0.init(params), params)
    u, s = tx.update(flax_grads, tx.init(flax_layout), flax_layout)
    for k in params:
        np.testing.assert_array_equal(
            np.moveaxis(np.asarray(apply_updates(params, u0, s0)[k]), 0, -1),
            apply_updates(flax_layout, u, s)[k])
    assert s.layout is None and s.output_axis == -1


def test_output_axis_is_checked():
    params = {"w": jnp.ones((3, 4))}
    with pytest.raises(ValueError, match="output_axis must be an int"):
        laperm(optax.sgd(0.1), output_axis=0.0)
    with pytest.raises(ValueError, match=r"output_axis=2 is out of range for the leaf \['w'\]"):
        laperm(optax.sgd(0.1), output_axis=2).init(params)
