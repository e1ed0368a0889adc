"""The methods' toolkit: argument checks, split / pair / rebuild, leaf keys, draws."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from randjax import tree


def test_checks_accept_and_convert():
    assert tree.check_bool(True, "flag") is True
    assert tree.check_int(np.int64(3), "n", minimum=1) == 3
    assert type(tree.check_int(np.int64(3), "n")) is int
    assert tree.check_real(1, "x", low=0.0, high=1.0) == 1.0
    assert tree.check_choice("a", ("a", "b"), "mode") == "a"
    assert tree.check_density(np.float32(0.25)) == 0.25
    assert tree.check_filter(tree.is_kernel) is tree.is_kernel


@pytest.mark.parametrize("call, message", [
    (lambda: tree.check_bool(1, "flag"), "flag must be a Python bool, got 1"),
    (lambda: tree.check_int(True, "n"), "n must be a Python int, got True"),
    (lambda: tree.check_int(2.0, "n"), "n must be a Python int, got 2.0"),
    (lambda: tree.check_int(0, "k", minimum=1, what="options per connection"),
     r"k must be a Python int >= 1 \(options per connection\), got 0"),
    (lambda: tree.check_real(float("nan"), "x"), "x must be a finite Python real"),
    (lambda: tree.check_real(jnp.float32(1.0), "x"), "x must be a finite Python real"),
    (lambda: tree.check_real(2.0, "x", low=0.0, high=1.0), r"x must be in \[0.0, 1.0\]"),
    (lambda: tree.check_real(-1.0, "x", low=0.0), r"x must be in \[0.0, inf\]"),
    (lambda: tree.check_choice("c", ("a", "b"), "mode"),
     r"mode must be one of \('a', 'b'\), got 'c'"),
    (lambda: tree.check_density(0.0), r"density must be in \(0, 1\]"),
    (lambda: tree.check_density(jnp.float32(0.5)), "static number of kept entries"),
    (lambda: tree.check_filter(3), "filter must be a callable filter"),
    (lambda: tree.check_store_weights(False, None, "m"), "m: store_weights=False redraws"),
])
def test_checks_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _params():
    return {"Dense_0": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)},
            "Dense_1": {"kernel": jnp.ones((3, 1))}}


def test_split_then_pair_and_rebuild():
    params = _params()
    make = lambda key, leaf: jnp.full(leaf.shape, 2.0, leaf.dtype)
    trainable, frozen = tree.split(jax.random.key(0), params, filter=tree.is_kernel,
                                   make_trainable=make, weight_init=None,
                                   train_others=False, method="test")
    assert trainable["Dense_0"]["bias"] is None
    np.testing.assert_array_equal(frozen["Dense_0"]["bias"], params["Dense_0"]["bias"])
    np.testing.assert_array_equal(frozen["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    paired = tree.pair(trainable, frozen, "test")
    assert [jax.tree_util.keystr(p) for p in paired.paths()] == [
        "['Dense_0']['bias']", "['Dense_0']['kernel']", "['Dense_1']['kernel']"]
    assert len(paired.selected()) == 2
    rebuilt = paired.rebuild(t * f for t, f in paired.selected())
    chex.assert_trees_all_equal(rebuilt, {
        "Dense_0": {"kernel": 2 * params["Dense_0"]["kernel"], "bias": jnp.ones(3)},
        "Dense_1": {"kernel": 2 * jnp.ones((3, 1))}})
    # train_others moves the unselected leaves to the trainable tree.
    trainable, frozen = tree.split(jax.random.key(0), params, filter=tree.is_kernel,
                                   make_trainable=make, weight_init=None,
                                   train_others=True, method="test")
    assert frozen["Dense_0"]["bias"] is None and trainable["Dense_0"]["bias"].shape == (3,)
    with pytest.raises(ValueError, match="test.apply: trainable and frozen must have"):
        tree.pair(trainable, {"other": None}, "test")


def test_lean_split_stores_keys_and_redraws_the_same_weights():
    init = jax.nn.initializers.normal(1.0)
    make = lambda key, leaf: jnp.zeros_like(leaf)
    args = dict(filter=tree.is_kernel, make_trainable=make, weight_init=init,
                train_others=False, method="test")
    stored = tree.split(jax.random.key(3), _params(), **args)
    lean = tree.split(jax.random.key(3), _params(), store_weights=False, **args)
    key_data = lean[1]["Dense_1"]["kernel"]
    assert key_data.dtype == jnp.uint32 and key_data.shape == (2,)
    # The i-th selected leaf's weight is the draw of leaf_keys(key, i)[1].
    np.testing.assert_array_equal(
        jax.random.key_data(tree.leaf_keys(jax.random.key(3), 1)[1]), key_data)
    for on, off in zip(tree.pair(*stored, "test").weights(init, True),
                       tree.pair(*lean, "test").weights(init, False)):
        np.testing.assert_array_equal(on, off)  # bitwise, eager and from keys


def test_split_refuses_what_it_cannot_split():
    make = lambda key, leaf: leaf
    args = dict(make_trainable=make, weight_init=None, train_others=False, method="m")
    with pytest.raises(ValueError, match="m: filter selects no leaf"):
        tree.split(jax.random.key(0), {"b": jnp.ones(3)}, filter=tree.is_kernel, **args)
    with pytest.raises(ValueError, match="m.init needs a jax.random key"):
        tree.split(None, _params(), filter=tree.is_kernel, **args)
    with pytest.raises(ValueError, match=r"leaf \['w'\] must have a floating dtype"):
        tree.split(jax.random.key(0), {"w": jnp.ones((2, 2), jnp.int32)},
                   filter=tree.is_kernel, **args)
    with pytest.raises(ValueError, match="needs kernels with ndim >= 2"):
        tree.split(jax.random.key(0), {"b": jnp.ones(3)}, filter=lambda p, x: True,
                   named=(("weight_init", "signed_constant"),), **args)


def test_leaf_keys_differ_per_leaf_and_purpose():
    key = jax.random.key(0)
    data = [jax.random.key_data(k).tolist() for i in range(3) for k in tree.leaf_keys(key, i)]
    assert len({tuple(d) for d in data}) == 6


def test_draw_compiles_once_per_shape():
    init = jax.nn.initializers.uniform(1.0)
    before = tree.draw._cache_size()
    a = tree.draw(init, jax.random.key(0), (4, 5), jnp.float32)
    b = tree.draw(init, jax.random.key(1), (4, 5), jnp.float32)
    assert tree.draw._cache_size() == before + 1
    assert a.shape == (4, 5) and not np.array_equal(a, b)


def test_pair_checks_selected_shapes_and_where_the_others_sit():
    trainable = {"w": jnp.ones((2, 3)), "b": None}
    frozen = {"w": jnp.zeros((2, 3)), "b": jnp.ones(3)}
    like = tree.weight_like(True)
    assert len(tree.pair(trainable, frozen, "m", frozen_like=like, others="frozen")
               .selected()) == 1
    with pytest.raises(ValueError, match=r"m.apply: leaf \['w'\]: a trainable leaf \(2, 3\) "
                                         r"float32 needs a frozen leaf of shape \(2, 3\) "
                                         r"\(floating\), got \(3,\) float32$"):
        tree.pair(trainable, {**frozen, "w": jnp.zeros(3)}, "m", frozen_like=like)
    with pytest.raises(ValueError, match=r"got \(2, 3\) int32"):
        tree.pair(trainable, {**frozen, "w": jnp.zeros((2, 3), jnp.int32)}, "m",
                  frozen_like=like)
    with pytest.raises(ValueError, match=r"unselected leaf \['b'\] is in trainable, but this m "
                                         r"keeps the unselected leaves in frozen \(swapped"):
        tree.pair(frozen, trainable, "m", frozen_like=like, others="frozen")
    tree.pair(frozen, trainable, "m", frozen_like=like, others="trainable")
    keys = tree.weight_like(False)
    with pytest.raises(ValueError, match=r"shape 1-D \(unsignedinteger\).*swapped"):
        tree.pair({"w": jnp.zeros(2, jnp.uint32)}, {"w": jnp.ones((2, 3))}, "m",
                  frozen_like=keys)
    with pytest.raises(ValueError, match="others must be one of"):
        tree.pair(trainable, frozen, "m", others="both")


def test_check_callable():
    assert tree.check_callable(len, "f") is len
    with pytest.raises(ValueError, match=r"init must be a callable init\(key\), got 3"):
        tree.check_callable(3, "init", "init(key)")
    with pytest.raises(ValueError, match="f must be a callable, got None"):
        tree.check_callable(None, "f")
