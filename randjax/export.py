"""Compact export of networks whose weights are random draws.

A network trained by a weight-freezing method is fully described by the keys
its frozen values were drawn from, the method's `Reparam.spec` (initializer
names included) and, per connection, which random value it uses:

* edge-popup: one bit per weight (kept or not), ``numpy.packbits`` of the
  mask. A LeNet-300-100 shrinks about 32-fold against float32.
* Slot Machines: the index of the greedy option (the largest score) at
  ``ceil(log2 K)`` bits per connection (`randjax.slots.pack_indices`): a
  LeNet-300-100 without biases shrinks 30.5-fold at K=2, 10.5-fold at K=8
  and 5.3-fold at K=64 (the payload bounds are 32, 10.7 and 5.3). Only a
  machine that evaluates one network is exported: ``eval_selection=
  "greedy"`` (``selection="sample"`` machines included, as their greedy
  network); one that samples at evaluation draws a new network at every
  call and is refused (build the same trees' `Reparam` with
  ``eval_selection="greedy"`` to export its greedy network).

`save` writes that (plus any leaf the method does not select, as it is) to
one ``.npz`` file, and `load` redraws the frozen values with the same jitted
draw and rebuilds the effective parameters, bitwise equal to
``reparam.apply(trainable, frozen, train=False)``, so the logits are
identical.

File layout (compressed NumPy ``.npz``, no pickles): ``spec`` (UTF-8 JSON
bytes: the method's `Reparam.spec` and, per leaf, its path, shape and dtype),
and per leaf ``i``: ``key_i`` (raw key data of its weights / options) and
``mask_i`` (edge-popup) or ``index_i`` (Slot Machines) for a selected leaf,
``value_i`` for any other.

References:
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
    CVPR 2020 (Sec. 1: a network as a seed and a binary mask).
    Aladago & Torresani, "Slot Machines: Discovering Winning Combinations of
    Random Weights in Neural Networks", ICML 2021 (a network as a seed and
    one choice among K per connection).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from randjax import reparam as reparam_lib
from randjax import slots

PyTree = Any
FORMAT = "randjax.export/1"


class ExportInfo(NamedTuple):
    """What `save` wrote: the file, its size and the float32 size it replaces.

    Attributes:
        path: the file written.
        bytes: its size on disk.
        float32_bytes: 4 bytes per parameter, a float32 checkpoint's payload.
        ratio: ``float32_bytes / bytes``.
    """

    path: str
    bytes: int
    float32_bytes: int
    ratio: float


def _path_entry(key) -> list:
    if isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, str):
        return ["dict", key.key]
    if isinstance(key, jax.tree_util.SequenceKey):
        return ["list", key.idx]
    raise ValueError(
        f"export supports params of nested dicts (string keys) and lists, got "
        f"path entry {key!r}")


def _unflatten(paths: list[list], leaves: list) -> Any:
    """Nested dicts and lists from ``_path_entry`` paths."""
    root: dict = {}
    for path, leaf in zip(paths, leaves):
        node, keys = root, ["root", *(key for _, key in path)]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf
    return _lists(root["root"])


def _lists(node):
    # Sequences were rebuilt as dicts keyed by index; make them lists again.
    if not isinstance(node, dict):
        return node
    children = {k: _lists(v) for k, v in node.items()}
    if children and all(isinstance(k, int) for k in children):
        return [children[i] for i in range(len(children))]
    return children


# ---------------------------------------------------------------------------
# Per method: what a selected leaf stores, and how it is rebuilt.
#
# A saver maps (spec, selected, key) to one (arrays, shape) per selected leaf
# (``selected``: (trainable, frozen, where) triples in flattening order;
# ``arrays``: {"key": ..., "mask" | "index": ...}; ``shape``: the effective
# leaf's). A loader factory maps spec to ``rebuild(arrays, shape, dtype)``.


def _frozen_keys(draw, described, shapes, selected, key):
    """Raw key data of every selected leaf's frozen draw, checked against frozen.

    With ``store_weights=False`` the frozen leaf is that key data already;
    with stored values, the key is ``leaf_keys(key, i)[1]`` and the stored
    values must equal its redraw bitwise.
    """
    keys = []
    for index, ((scores, stored, where), shape) in enumerate(zip(selected, shapes)):
        if not jnp.issubdtype(stored.dtype, jnp.floating):  # lean: the key itself
            keys.append(np.asarray(stored))
            continue
        if key is None:
            raise ValueError(
                "the frozen weights are stored (store_weights=True): pass key=, "
                "the key given to reparam.init (randjax.train.reparam_key(seed) "
                "after randjax.fit), or train with store_weights=False")
        leaf_key = reparam_lib.leaf_keys(key, index)[1]
        drawn = reparam_lib._draw(draw, leaf_key, shape, scores.dtype)
        if not np.array_equal(np.asarray(drawn), np.asarray(stored)):
            raise ValueError(
                f"the frozen weight {where} is not the draw of {described} from "
                "key: was key the one given to reparam.init?")
        keys.append(np.asarray(jax.random.key_data(leaf_key)))
    return keys


def _edge_popup_init(spec) -> Callable:
    return reparam_lib.scaled_init(spec["weight_init"], spec["density"], spec["scale_fan"])


def _edge_popup_save(spec, selected, key):
    shapes = [t.shape for t, _, _ in selected]
    keys = _frozen_keys(_edge_popup_init(spec), repr(spec["weight_init"]), shapes,
                        selected, key)
    masks = reparam_lib.edge_popup_masks([t for t, _, _ in selected], spec["density"],
                                         spec["scope"], spec["rounding"])
    return [(dict(key=kd, mask=np.packbits(np.asarray(mask).ravel() != 0)), shape)
            for kd, mask, shape in zip(keys, masks, shapes)]


def _edge_popup_load(spec):
    weight_init = _edge_popup_init(spec)

    def rebuild(arrays, shape, dtype):
        weight = reparam_lib._draw(weight_init, jax.random.wrap_key_data(
            jnp.asarray(arrays["key"])), shape, dtype)
        bits = np.unpackbits(arrays["mask"], count=math.prod(shape))
        return weight * jnp.asarray(bits.reshape(shape), dtype)

    return rebuild


def _slot_init(spec) -> Callable:
    return slots._option_init(spec["init"], spec["k"], spec["shared_options"])


def _slot_machine_save(spec, selected, key):
    if spec["eval_selection"] != "greedy":
        raise ValueError(
            "export.save exports the one network a Slot Machine evaluates, but this "
            f"one samples at evaluation (eval_selection={spec['eval_selection']!r}): "
            "a new network at every call. To export its greedy network, build the "
            "same slot_machine with eval_selection='greedy' (the trees are the same)")
    shapes = [t.shape[:-1] for t, _, _ in selected]
    described = f"slot_machine options (init={spec['init']!r}, k={spec['k']})"
    keys = _frozen_keys(_slot_init(spec), described, shapes, selected, key)
    return [(dict(key=kd, index=slots.pack_indices(
                np.asarray(jnp.argmax(t, axis=-1)).ravel(), spec["k"])[0]), shape)
            for kd, (t, _, _), shape in zip(keys, selected, shapes)]


def _slot_machine_load(spec):
    option_init, k = _slot_init(spec), spec["k"]

    def rebuild(arrays, shape, dtype):
        options = np.asarray(reparam_lib._draw(option_init, jax.random.wrap_key_data(
            jnp.asarray(arrays["key"])), shape, dtype))
        index = slots.unpack_indices(arrays["index"], k, math.prod(shape)).reshape(shape)
        if options.ndim == 1:  # shared_options: K values for every connection
            return jnp.asarray(options[index])
        return jnp.asarray(np.take_along_axis(options, index[..., None], -1)[..., 0])

    return rebuild


_METHODS = {"edge_popup": (_edge_popup_save, _edge_popup_load),
            "slot_machine": (_slot_machine_save, _slot_machine_load)}


# ---------------------------------------------------------------------------
# The file.


def save(path: str | os.PathLike, reparam: reparam_lib.Reparam, trainable: PyTree,
         frozen: PyTree, *, key: jax.Array | None = None) -> ExportInfo:
    """Saves a network as keys, the method's spec and its per-connection choices.

    Edge-popup leaves store their weight key and a bit mask; Slot Machine
    leaves their options key and the greedy option indices at
    ``ceil(log2 K)`` bits each (see the module docstring).

    Args:
        path: the ``.npz`` file to write (NumPy adds ``.npz`` if missing).
        reparam: the `randjax.edge_popup` `Reparam` the network was trained
            with, its ``weight_init`` a registered name (so `load` can redraw
            the weights), or a `randjax.slot_machine` with
            ``eval_selection="greedy"``.
        trainable: the trained scores tree.
        frozen: its frozen tree.
        key: the key given to ``reparam.init``; needed only when the weights
            or options are stored (``store_weights=True``), to record and
            check their keys. With ``store_weights=False`` the keys are in
            ``frozen``.

    Returns:
        An `ExportInfo` with the file size and the ratio to float32.

    Raises:
        ValueError: ``reparam`` has no exportable ``spec`` (neither
            edge-popup with a named ``weight_init`` nor a Slot Machine); a
            Slot Machine that samples at evaluation; ``key`` is missing or is
            not the one the stored values were drawn from; a container other
            than dicts with string keys and lists.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, randjax, tempfile
        >>> rp = randjax.edge_popup(0.5, weight_init="signed_constant",
        ...                         store_weights=False)
        >>> params = {"w": jnp.zeros((100, 10)), "b": jnp.ones(10)}
        >>> trainable, frozen = rp.init(jax.random.key(0), params)
        >>> path = tempfile.mkdtemp() + "/net.npz"
        >>> info = randjax.export.save(path, rp, trainable, frozen)
        >>> rebuilt = randjax.export.load(path)
        >>> np.array_equal(rebuilt["w"], rp.apply(trainable, frozen)["w"])
        True
        >>> sm = randjax.slot_machine(8)
        >>> trainable, frozen = sm.init(jax.random.key(1), params)
        >>> info = randjax.export.save(path, sm, trainable, frozen,
        ...                            key=jax.random.key(1))
        >>> rebuilt = randjax.export.load(path)
        >>> np.array_equal(rebuilt["w"], sm.apply(trainable, frozen, train=False)["w"])
        True

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020. Aladago & Torresani, "Slot Machines", ICML 2021.
    """
    spec = reparam.spec
    if not spec or spec.get("method") not in _METHODS:
        raise ValueError(
            "export.save supports randjax.edge_popup reparams whose weight_init is a "
            "registered initializer name, and randjax.slot_machine reparams; this one "
            f"has spec {spec!r}")
    treedef, t_leaves, f_leaves = reparam_lib._pair_leaves(trainable, frozen, "export")
    key_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(
        treedef.unflatten([0] * treedef.num_leaves))[0]]
    paths = [[_path_entry(k) for k in p] for p in key_paths]
    selected = [(t, f, jax.tree_util.keystr(p)) for t, f, p in
                zip(t_leaves, f_leaves, key_paths) if t is not None and f is not None]
    stored = iter(_METHODS[spec["method"]][0](spec, selected, key))
    arrays, leaves, num_params = {}, [], 0
    for i, (t, f, p) in enumerate(zip(t_leaves, f_leaves, paths)):
        if t is not None and f is not None:
            leaf_arrays, shape = next(stored)
            arrays.update({f"{name}_{i}": a for name, a in leaf_arrays.items()})
            dtype, masked = t.dtype, True
        else:
            leaf = f if t is None else t
            if leaf is None:
                continue
            arrays[f"value_{i}"] = np.asarray(leaf)
            shape, dtype, masked = leaf.shape, leaf.dtype, False
        leaves.append(dict(index=i, path=p, shape=list(shape), dtype=str(dtype),
                           masked=masked))
        num_params += math.prod(shape)
    header = dict(format=FORMAT, spec=spec, leaves=leaves)
    arrays["spec"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    np.savez_compressed(path, **arrays)
    size = os.path.getsize(path)
    return ExportInfo(path, size, 4 * num_params, 4 * num_params / size)


def load(path: str | os.PathLike) -> PyTree:
    """Rebuilds the effective parameters that `save` exported.

    Each selected leaf's frozen values are redrawn from its key with the
    same jitted draw as ``reparam.apply``; an edge-popup weight is multiplied
    by its unpacked mask, a Slot Machine takes the option of each unpacked
    index (its greedy network). Other leaves come back as saved. The result
    is bitwise ``reparam.apply(trainable, frozen, train=False)``.

    Args:
        path: a file written by `save`.

    Returns:
        The effective parameters as nested dicts (and lists), with the
        paths of the original tree: feed them to the model's ``apply``.

    Raises:
        ValueError: the file is not a randjax export, or of an unknown method.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    try:
        header = json.loads(arrays["spec"].tobytes())
        if header["format"] != FORMAT:
            raise KeyError("format")
        spec = header["spec"]
        rebuild = _METHODS[spec["method"]][1](spec)
    except (KeyError, ValueError, TypeError, AttributeError):
        raise ValueError(f"{path} is not a randjax export ({FORMAT}) of a method in "
                         f"{sorted(_METHODS)}") from None
    leaves = []
    for leaf in header["leaves"]:
        i, shape, dtype = leaf["index"], tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])
        if not leaf["masked"]:
            leaves.append(jnp.asarray(arrays[f"value_{i}"]))
            continue
        stored = {name: arrays[f"{name}_{i}"] for name in ("key", "mask", "index")
                  if f"{name}_{i}" in arrays}
        leaves.append(rebuild(stored, shape, dtype))
    return _unflatten([leaf["path"] for leaf in header["leaves"]], leaves)
