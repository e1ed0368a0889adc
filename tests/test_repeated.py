"""Repeated computations run as loops: the same bits, code that does not grow with repeats."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax
from randjax import models, train
from randjax.repeated import loop_repeated_draws


def draws(n):
    """``n`` normal (3, 4) tensors and ``n`` uniform (5,) ones, each from its own key."""
    def fn(key):
        return ([jax.random.normal(jax.random.fold_in(key, i), (3, 4)) * 0.5 for i in range(n)],
                [jax.random.uniform(jax.random.fold_in(key, n + i), (5,), minval=-1.0)
                 for i in range(n)])
    return fn


def assert_bitwise(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def call_sites(fn, *args) -> int:
    return len(re.findall(r"call @", jax.jit(fn).lower(*args).as_text()))


def test_repeated_draws_are_the_same_bits_from_code_that_does_not_grow():
    key = jax.random.key(4)
    looped = {n: loop_repeated_draws(draws(n), key) for n in (3, 9)}
    for n, fn in looped.items():
        assert_bitwise(jax.jit(fn)(key), jax.jit(draws(n))(key))
    assert call_sites(looped[3], key) == call_sites(looped[9], key)
    assert call_sites(draws(9), key) > call_sites(looped[9], key)


def test_a_computation_the_outputs_share_runs_once():
    # Each mask needs its own weights and one threshold over all of them:
    # the threshold's sort is shared, so it stays out of the loop.
    def fn(key):
        weights = [jax.random.normal(jax.random.fold_in(key, i), (4, 4)) for i in range(5)]
        threshold = jnp.sort(jnp.concatenate([jnp.ravel(w) for w in weights]))[40]
        return weights, [w > threshold for w in weights]

    key = jax.random.key(0)
    looped = loop_repeated_draws(fn, key)
    assert_bitwise(jax.jit(looped)(key), jax.jit(fn)(key))
    assert jax.jit(looped).lower(key).as_text().count("stablehlo.sort") == 1


def test_inputs_literals_and_identical_draws_pass_through():
    def fn(x, key):
        same = [jax.random.normal(key, (3,)) for _ in range(3)]   # one draw, repeated
        return x, 2.0, same, [x * 2.0, x * 3.0]

    args = (jnp.arange(3.0), jax.random.key(1))
    out = jax.jit(loop_repeated_draws(fn, *args))(*args)
    assert_bitwise(out, jax.jit(fn)(*args))
    np.testing.assert_array_equal(out[2][0], out[2][2])


def test_a_program_with_effects_runs_as_written(capfd):
    def fn(key):
        draws = [jax.random.normal(jax.random.fold_in(key, i), (3,)) for i in range(3)]
        jax.debug.print("drawn {}", draws[0][0] > 10)
        return draws

    key = jax.random.key(1)
    looped = loop_repeated_draws(fn, key)
    assert_bitwise(jax.jit(looped)(key), jax.jit(fn)(key))
    assert capfd.readouterr().out.count("drawn False") == 2
    assert call_sites(looped, key) == call_sites(fn, key)


def test_the_loops_compute_on_the_arguments_given_not_the_examples():
    def fn(x, key):
        return [x + jax.random.normal(jax.random.fold_in(key, i), (3,)) for i in range(4)]

    looped = loop_repeated_draws(fn, jnp.zeros(3), jax.random.key(0))
    args = (jnp.arange(3.0), jax.random.key(5))
    assert call_sites(looped, *args) < call_sites(fn, *args)
    assert_bitwise(jax.jit(looped)(*args), jax.jit(fn)(*args))


@pytest.mark.parametrize("method", ["dense", "laperm"])
def test_a_resnet_init_state_is_the_unlooped_programs_bitwise(method, monkeypatch):
    # init_state loops over the ResNet's 3x3 kernels of each shape (and
    # LaPerm's sorted copies of them); the state is the plain jitted
    # init's, bit for bit.
    model = models.as_model(models.get("resnet20", num_classes=10))
    reparam, tx = randjax.dense(), optax.sgd(0.1, momentum=0.9)
    if method == "laperm":
        tx = randjax.laperm(optax.adam(1e-3), 20, include_1d=True)
    key = jax.random.key(2)

    def initial(key):
        model_key, reparam_key = jax.random.split(key)
        params, model_state = model.init(model_key, jnp.zeros((1, 28, 28, 1)))
        trainable, frozen = reparam.init(reparam_key, params)
        return train.TrainState(jnp.zeros((), jnp.int32), trainable, frozen, model_state,
                                tx.init(trainable))

    looped = []
    monkeypatch.setattr(train, "loop_repeated_draws",
                        lambda *a: looped.append(loop_repeated_draws(*a)) or looped[-1])
    state = train.init_state(model, reparam, tx, (28, 28, 1), key)
    assert len(looped) == 1
    assert_bitwise(state, jax.jit(initial)(key))
    assert call_sites(looped[0], key, None) < call_sites(initial, key)


def distinct_draws(n):
    """``n`` draws of distinct shapes (normal, uniform, truncated normal) from split keys."""
    def fn(key):
        samplers = [jax.random.normal, jax.random.uniform,
                    lambda k, s: jax.random.truncated_normal(k, -2.0, 2.0, s)]
        return [samplers[i % 3](k, (i + 2, 3)) for i, k in enumerate(jax.random.split(key, n))]
    return fn


def hashes(fn, *args) -> int:
    """Copies of Threefry's code in ``fn``'s program: its key schedule's constant, once each."""
    return jax.jit(fn).lower(*args).as_text().count(str(0x1BD11BDA))


def test_distinct_draws_are_one_hash_of_the_same_words():
    key = jax.random.key(7)
    for n in (3, 7):
        merged = loop_repeated_draws(distinct_draws(n), key)
        assert_bitwise(jax.jit(merged)(key), jax.jit(distinct_draws(n))(key))
        assert hashes(distinct_draws(n), key) == n + 1   # the split, then one per draw
        assert hashes(merged, key) == 2


def test_draws_past_a_merged_hashs_size_take_several(monkeypatch):
    monkeypatch.setattr(randjax.repeated, "MERGED_WORDS", 20)   # draws of 6..24 words
    key = jax.random.key(3)
    merged = loop_repeated_draws(distinct_draws(7), key)
    assert_bitwise(jax.jit(merged)(key), jax.jit(distinct_draws(7))(key))
    assert 2 < hashes(merged, key) < 8


@pytest.mark.parametrize("case", ["rbg", "narrow_words", "not_partitionable"])
def test_draws_no_merged_hash_reproduces_run_as_written(case):
    key = jax.random.key(2, impl="rbg") if case == "rbg" else jax.random.key(2)

    def fn(key):
        keys = jax.random.split(key, 3)
        if case == "narrow_words":
            return [jax.random.bits(k, (i + 2,), jnp.uint8) for i, k in enumerate(keys)]
        return [jax.random.normal(k, (i + 2,)) for i, k in enumerate(keys)]

    with jax.threefry_partitionable(case != "not_partitionable"):
        merged = loop_repeated_draws(fn, key)
        assert_bitwise(jax.jit(merged)(key), jax.jit(fn)(key))
        if case != "rbg":
            assert hashes(merged, key) == hashes(fn, key)


def test_a_jit_called_twice_is_inlined_twice_with_its_constants():
    scale = jnp.arange(1.0, 4.0)
    draw = jax.jit(lambda k: jax.random.normal(k, (3,)) * scale)

    def fn(key):
        a, b = jax.random.split(key)
        return draw(a), draw(b), draw(a) + 1.0, jax.random.uniform(b, (2, 2))

    key = jax.random.key(9)
    assert_bitwise(jax.jit(loop_repeated_draws(fn, key))(key), jax.jit(fn)(key))
