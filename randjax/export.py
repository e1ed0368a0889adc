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

A network trained by LaPerm (`randjax.laperm`) is its initial weights,
redrawn from the model's name, options and init key, plus one permutation per
weight vector: `save_permuted` stores each as indices of the smallest
unsigned int type that holds the vector's positions (uint8 up to 256
entries, uint16 up to 65,536), or, with ``lehmer=True``, as its Lehmer code
packed into ``ceil(log2(n!) / 8)`` bytes. A LeNet-300-100 shrinks about 2x
against float32 with indices and about 4x with Lehmer codes. `load` rebuilds
the parameters bitwise.

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
    Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
    their Values", NeurIPS 2020 (a network as its random initial weights
    and per-vector permutations).
    Aladago & Torresani, "Slot Machines: Discovering Winning Combinations of
    Random Weights in Neural Networks", ICML 2021 (a network as a seed and
    one choice among K per connection).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from randjax import init as init_lib
from randjax import models as models_lib
from randjax import permute, slots
from randjax import reparam as reparam_lib

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


def _write(path, spec: dict, leaves: list[dict], arrays: dict,
           num_params: int) -> ExportInfo:
    """Writes ``arrays`` and the JSON header to ``path`` (``.npz`` appended if missing)."""
    header = {"format": FORMAT, "spec": spec, "leaves": leaves}
    arrays["spec"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    np.savez_compressed(path, **arrays)
    size = os.path.getsize(path)
    return ExportInfo(path, size, 4 * num_params, 4 * num_params / size)


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
    return _write(path, spec, leaves, arrays, num_params)


def load(path: str | os.PathLike) -> PyTree:
    """Rebuilds the effective parameters that `save` exported.

    A `save_permuted` file redraws the model's initial parameters and
    gathers every permuted vector by its stored permutation: the result is
    bitwise the parameters that were saved.

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
        ValueError: the file is not a randjax export, or of an unknown method;
            a permutation file's redrawn initial parameters do not match it.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    try:
        header = json.loads(arrays["spec"].tobytes())
        if header["format"] != FORMAT:
            raise KeyError("format")
        spec = header["spec"]
        permuted = spec["method"] == "laperm"
        rebuild = None if permuted else _METHODS[spec["method"]][1](spec)
    except (KeyError, ValueError, TypeError, AttributeError):
        raise ValueError(f"{path} is not a randjax export ({FORMAT}) of a method in "
                         f"{sorted([*_METHODS, 'laperm'])}") from None
    if permuted:
        return _load_permuted(header, arrays)
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


# ---------------------------------------------------------------------------
# LaPerm: initial weights (model + key) and per-vector permutations.


def _initializer_names() -> dict[int, str]:
    named = {id(fn): name for name, fn in init_lib._INITIALIZERS.items()}
    named[id(models_lib.he_uniform)] = "he_uniform"
    return named


def _initializer(name: str):
    return models_lib.he_uniform if name == "he_uniform" else init_lib.get(name)


def _model_spec(model) -> dict:
    """``{"model": name, "options": {...}}``: the zoo model's non-default options."""
    names = {cls: name for name, cls in models_lib.REGISTRY.items()}
    if type(model) not in names:
        raise ValueError(
            "export.save_permuted redraws the initial weights of a randjax.models zoo "
            f"model; got {type(model).__name__} (registered: {models_lib.names()})")
    defaults = {f.name: f.default for f in dataclasses.fields(type(model))}
    initializers, options = _initializer_names(), {}
    for name in models_lib.option_names(type(model)):
        value = getattr(model, name)
        if value is defaults[name]:
            continue
        if callable(value) and not isinstance(value, type):
            if id(value) not in initializers:
                raise ValueError(
                    f"export.save_permuted: the model's {name} is not a registered "
                    f"initializer (randjax.init.names() or he_uniform): {value!r}")
            options[name] = {"initializer": initializers[id(value)]}
        elif name == "dtype":
            options[name] = {"dtype": jnp.dtype(value).name}
        elif value != defaults[name]:
            options[name] = list(value) if isinstance(value, tuple) else value
    json.dumps(options)  # fails early on an option JSON cannot hold
    return {"model": names[type(model)], "options": options}


def _model_from_spec(spec: dict):
    options = {}
    for name, value in spec["options"].items():
        if isinstance(value, dict) and "initializer" in value:
            value = _initializer(value["initializer"])
        elif isinstance(value, dict) and "dtype" in value:
            value = jnp.dtype(value["dtype"])
        elif isinstance(value, list):
            value = tuple(value)
        options[name] = value
    return models_lib.get(spec["model"], **options)


def _initial_params(spec: dict, key_data: np.ndarray) -> dict:
    model = _model_from_spec(spec)
    key = jax.random.wrap_key_data(jnp.asarray(key_data))
    x = jnp.zeros((1, *spec["input_shape"]), jnp.float32)
    return model.init(key, x)["params"]   # as randjax.train.init_state draws them


def _flat_with_paths(tree) -> tuple[list[list], list]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [[_path_entry(k) for k in p] for p, _ in leaves], [leaf for _, leaf in leaves]


def _index_dtype(n: int) -> np.dtype:
    """The smallest unsigned int dtype that holds the positions 0 .. n-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _lehmer_bytes(n: int) -> int:
    return max(1, ((math.factorial(n) - 1).bit_length() + 7) // 8)


def _pack_lehmer(perm: np.ndarray) -> np.ndarray:
    """Each column's Lehmer code as one mixed-radix integer: ``(m, bytes)`` uint8."""
    n, width = perm.shape[0], _lehmer_bytes(perm.shape[0])
    code = permute.lehmer_code(perm)
    rows = []
    for column in code.T.tolist():
        value = 0
        for i, digit in enumerate(column):   # digit i has radix n - i
            value = value * (n - i) + digit
        rows.append(np.frombuffer(value.to_bytes(width, "little"), np.uint8))
    return np.stack(rows)


def _unpack_lehmer(packed: np.ndarray, n: int) -> np.ndarray:
    code = np.zeros((n, packed.shape[0]), np.int64)
    for c, row in enumerate(packed):
        value = int.from_bytes(row.tobytes(), "little")
        for i in range(n - 1, -1, -1):
            value, code[i, c] = divmod(value, n - i)
    return permute.from_lehmer(code)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _permutation(w0: np.ndarray, w: np.ndarray, where: str) -> np.ndarray:
    """Per-column indices ``p`` with ``w = w0[p]`` bitwise; ValueError if none."""
    p = np.asarray(permute.find_permutation(w0, w))
    if not _same_bits(np.take_along_axis(permute._columns(w0), p, 0), permute._columns(w)):
        raise ValueError(
            f"export.save_permuted: the leaf {where} is not, per weight vector, a "
            "permutation of its initial values (wrong model, key or input_shape, or "
            "weights saved between syncs: project them with "
            "randjax.reconnect.synced_params(params, opt_state) first)")
    return p


def save_permuted(path: str | os.PathLike, params: PyTree, model, key: jax.Array,
                  input_shape, *, include_1d: bool = False, filter=None,
                  lehmer: bool = False) -> ExportInfo:
    """Saves a LaPerm-trained network as its init key and per-vector permutations.

    The initial parameters are redrawn from ``model`` (a `randjax.models`
    zoo model: its name and non-default options, initializers by registered
    name) and ``key``, exactly as ``model.init(key, zeros((1,
    *input_shape)))`` (what `randjax.fit` does with
    ``randjax.train.model_key(seed)``). Every selected leaf must be, per
    weight vector (a column of ``leaf.reshape(-1, out)``; a 1-D leaf is one
    vector), bitwise a permutation of its initial values; it is stored as
    the indices ``p`` with ``leaf = init[p]`` in the smallest unsigned dtype
    that holds ``0 .. n-1``, or as packed Lehmer codes. Other leaves are
    stored as they are.

    Args:
        path: the ``.npz`` file to write (NumPy adds ``.npz`` if missing).
        params: the trained parameters, after a sync (or projected with
            `randjax.reconnect.synced_params`).
        model: the zoo model the parameters belong to.
        key: the key the model was initialised with.
        input_shape: the input shape without the batch axis (e.g. ``(28,
            28, 1)``), which fixes the shapes of the first Dense kernel.
        include_1d: also store 1-D leaves (biases) as permutations, as
            `randjax.laperm` with ``include_1d=True`` trains them.
        filter: ``filter(path, leaf) -> bool`` choosing the permuted leaves
            (default: kernels, ``ndim >= 2``), as given to `randjax.laperm`.
        lehmer: store each vector's permutation as its Lehmer code packed
            into ``ceil(log2(n!) / 8)`` bytes (about half the size of
            16-bit indices; encoding is O(n^2) per vector on the host).

    Returns:
        An `ExportInfo` with the file size and the ratio to float32.

    Raises:
        TypeError: ``filter`` is not callable.
        ValueError: ``model`` is not a zoo model or has an unregistered
            initializer; ``params`` does not have the initial parameters'
            structure and shapes; a selected leaf is not a per-vector
            permutation of its initial values; a container other than dicts
            with string keys and lists.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, randjax, tempfile
        >>> model = randjax.models.get("lenet300_100", width=0.1)
        >>> key = jax.random.key(0)
        >>> params = model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
        >>> trained = jax.tree.map(lambda w: w[::-1], params)  # reversed vectors
        >>> path = tempfile.mkdtemp() + "/laperm.npz"
        >>> info = randjax.export.save_permuted(path, trained, model, key, (8, 8, 1),
        ...                                     include_1d=True, lehmer=True)
        >>> rebuilt = randjax.export.load(path)
        >>> all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rebuilt),
        ...                                           jax.tree.leaves(trained)))
        True

    References:
        Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
        their Values", NeurIPS 2020.
    """
    include_1d = reparam_lib._check_bool(include_1d, "save_permuted: include_1d")
    lehmer = reparam_lib._check_bool(lehmer, "save_permuted: lehmer")
    select = init_lib.is_kernel if filter is None else filter
    if not callable(select):
        raise TypeError(f"save_permuted: filter must be a callable filter(path, leaf), "
                        f"got {filter!r}")
    spec = {"method": "laperm", **_model_spec(model),
            "input_shape": [int(d) for d in input_shape], "lehmer": lehmer}
    key_data = np.asarray(jax.random.key_data(key))
    init_paths, init_leaves = _flat_with_paths(_initial_params(spec, key_data))
    jax_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    paths, leaves = _flat_with_paths(params)
    if paths != init_paths:
        raise ValueError("export.save_permuted: params do not have the structure of the "
                         f"model's initial parameters ({len(paths)} vs {len(init_paths)} "
                         "leaves, or other names)")
    arrays, header_leaves, num_params = {"init_key": key_data}, [], 0
    for i, (p, jax_path, leaf, leaf0) in enumerate(zip(paths, jax_paths, leaves, init_leaves)):
        leaf, leaf0 = np.asarray(leaf), np.asarray(leaf0)
        where = jax.tree_util.keystr(jax_path)
        if leaf.shape != leaf0.shape or leaf.dtype != leaf0.dtype:
            raise ValueError(f"export.save_permuted: the leaf {where} is {leaf.dtype}"
                             f"{list(leaf.shape)}, its initial value {leaf0.dtype}"
                             f"{list(leaf0.shape)}")
        permuted = leaf.ndim >= 1 and (bool(select(jax_path, leaf))
                                       or (include_1d and leaf.ndim == 1))
        if permuted:
            perm = _permutation(leaf0, leaf, where)
            if lehmer:
                arrays[f"lehmer_{i}"] = _pack_lehmer(perm)
            else:
                arrays[f"perm_{i}"] = perm.astype(_index_dtype(perm.shape[0]))
        else:
            arrays[f"value_{i}"] = leaf
        header_leaves.append({"index": i, "path": p, "shape": list(leaf.shape),
                              "dtype": str(leaf.dtype), "permuted": permuted})
        num_params += leaf.size
    return _write(path, spec, header_leaves, arrays, num_params)


def _load_permuted(header: dict, arrays: dict) -> PyTree:
    spec = header["spec"]
    init_paths, init_leaves = _flat_with_paths(_initial_params(spec, arrays["init_key"]))
    initial = {json.dumps(p): leaf for p, leaf in zip(init_paths, init_leaves)}
    leaves = []
    for leaf in header["leaves"]:
        i, shape = leaf["index"], tuple(leaf["shape"])
        if not leaf["permuted"]:
            leaves.append(jnp.asarray(arrays[f"value_{i}"]))
            continue
        w0 = np.asarray(initial[json.dumps(leaf["path"])])
        if w0.shape != shape:
            raise ValueError(f"the redrawn initial leaf {leaf['path']} has shape "
                             f"{w0.shape}, the file {shape}")
        columns = permute._columns(w0)
        if spec["lehmer"]:
            perm = _unpack_lehmer(arrays[f"lehmer_{i}"], columns.shape[0])
        else:
            perm = arrays[f"perm_{i}"].astype(np.int64)
        leaves.append(jnp.asarray(np.take_along_axis(columns, perm, 0).reshape(shape)))
    return _unflatten([leaf["path"] for leaf in header["leaves"]], leaves)
