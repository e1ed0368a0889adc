"""Compact export of networks whose weights are random draws or their permutations.

A network trained by a weight-freezing method is fully described by the keys
its frozen values were drawn from, the method's `Reparam.spec` (initializer
names included) and, per connection, which random value it uses; a network
trained by LaPerm by its initial weights (a zoo model and its init key) and
one permutation per weight vector. Each method brings a `Codec` that says
what a leaf stores and how it is rebuilt, registered under its name with
`register_codec`:

* edge-popup (`randjax.edge_popup`): one bit per weight (kept or not), about
  32-fold smaller than float32;
* Slot Machines (`randjax.slot_machine`): the greedy option's index at
  ``ceil(log2 K)`` bits per connection;
* LaPerm: `randjax.methods.laperm.save_permuted`, the permutations as the
  smallest unsigned indices or packed Lehmer codes.

`save` writes a `Reparam`'s network (its selected leaves through the codec,
any other leaf as it is) to one ``.npz`` file; `load` reads any of these
files, redraws the frozen values with the same jitted draw and rebuilds the
effective parameters bitwise, so the logits are identical.

File layout (compressed NumPy ``.npz``, no pickles): ``spec`` (UTF-8 JSON
bytes: ``{"format", "spec": the method's spec, "leaves": [{"index", "path",
"shape", "dtype", ...}]}``); per leaf ``i`` either ``value_i`` (stored as it
is) or the codec's arrays ``<name>_i`` (e.g. ``key_i`` and ``mask_i``);
arrays whose name has no ``_<index>`` suffix (e.g. ``init_key``) belong to
the whole file.

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

import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from randjax import tree
from randjax.reparam import Reparam

PyTree = Any
FORMAT = "randjax.export/1"

__all__ = ["FORMAT", "Codec", "ExportInfo", "codec_names", "flatten_with_paths",
           "frozen_keys", "get_codec", "load", "register_codec", "save", "write"]


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


class Codec(NamedTuple):
    """A method's compact export: what a leaf stores, and how it is rebuilt.

    Attributes:
        decode: ``decode(spec, arrays) -> rebuild``, called by `load` once per
            file with the method's spec and every array of the file;
            ``rebuild(leaf, stored) -> array`` then rebuilds each leaf saved
            in compact form from its header entry ``leaf`` (``path``,
            ``shape``, ``dtype``, ...) and its arrays ``stored``
            (``{"key": ..., "mask": ...}``, the ``_<index>`` suffix removed).
        encode: ``encode(spec, selected, key) -> [(stored, shape), ...]``,
            what `save` stores for each selected leaf of a `Reparam`
            (``selected``: ``(trainable, frozen, where)`` in flattening
            order; ``key``: the key given to ``init``, or None; ``shape``:
            the effective leaf's). None where the method saves through a
            function of its own (LaPerm's ``save_permuted``).
    """

    decode: Callable[[dict, Mapping[str, np.ndarray]], Callable[[dict, dict], Any]]
    encode: Callable[[dict, list, jax.Array | None], list] | None = None


_CODECS: dict[str, Codec] = {}


def register_codec(method: str, codec: Codec) -> Codec:
    """Registers ``codec`` as the format of files whose spec names ``method``.

    A method module calls it once at import; registering the same name again
    replaces the codec (a module reloaded in a notebook).

    Returns:
        ``codec``.
    """
    if not isinstance(codec, Codec):
        raise ValueError(f"register_codec: codec must be an export.Codec, got {codec!r}")
    _CODECS[method] = codec
    return codec


def codec_names() -> list[str]:
    """The methods with a registered codec, sorted."""
    return sorted(_CODECS)


def get_codec(method: str) -> Codec:
    """The codec registered for ``method``; ValueError listing them if none."""
    try:
        return _CODECS[method]
    except (KeyError, TypeError):
        raise ValueError(f"no export codec is registered for method {method!r}; "
                         f"registered: {codec_names()}") from None


# ---------------------------------------------------------------------------
# Paths: nested dicts with string keys and lists.


def _path_entry(key) -> list:
    if isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, str):
        return ["dict", key.key]
    if isinstance(key, jax.tree_util.SequenceKey):
        return ["list", key.idx]
    raise ValueError(
        f"export supports params of nested dicts (string keys) and lists, got "
        f"path entry {key!r}")


def flatten_with_paths(params: PyTree) -> tuple[list[list], list]:
    """``(paths, leaves)`` of ``params``, each path as JSON-able ``[kind, key]`` pairs.

    Raises:
        ValueError: a container other than dicts with string keys and lists.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [[_path_entry(k) for k in p] for p, _ in leaves], [leaf for _, leaf in leaves]


def _unflatten(paths: list[list], leaves: list) -> Any:
    """Nested dicts and lists from `flatten_with_paths` paths."""
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
# The file.


def write(path: str | os.PathLike, spec: dict, leaves: list[dict],
          arrays: dict[str, np.ndarray], num_params: int) -> ExportInfo:
    """Writes ``arrays`` and the JSON header to ``path`` (``.npz`` appended if missing).

    The container every codec writes through: ``leaves`` are the header
    entries (``index``, ``path``, ``shape``, ``dtype`` and the codec's own
    fields), ``num_params`` the parameter count the float32 size is
    measured against.
    """
    header = {"format": FORMAT, "spec": spec, "leaves": leaves}
    arrays["spec"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    np.savez_compressed(path, **arrays)
    size = os.path.getsize(path)
    return ExportInfo(path, size, 4 * num_params, 4 * num_params / size)


def frozen_keys(initializer: Callable, described: str, shapes: list, selected: list,
                key: jax.Array | None) -> list[np.ndarray]:
    """Raw key data of every selected leaf's frozen draw, checked against it.

    For codecs of weight-freezing methods. With ``store_weights=False`` the
    frozen leaf is that key data already; with stored values, the key is
    ``randjax.tree.leaf_keys(key, i)[1]`` and the stored values must equal
    its redraw (``initializer`` at the leaf's shape and the scores' dtype)
    bitwise.

    Raises:
        ValueError: stored values and no ``key``; stored values that are not
            the draw of ``described`` from ``key``.
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
        leaf_key = tree.leaf_keys(key, index)[1]
        drawn = tree.draw(initializer, leaf_key, shape, scores.dtype)
        if not np.array_equal(np.asarray(drawn), np.asarray(stored)):
            raise ValueError(
                f"the frozen weight {where} is not the draw of {described} from "
                "key: was key the one given to reparam.init?")
        keys.append(np.asarray(jax.random.key_data(leaf_key)))
    return keys


def save(path: str | os.PathLike, reparam: Reparam, trainable: PyTree,
         frozen: PyTree, *, key: jax.Array | None = None) -> ExportInfo:
    """Saves a network as keys, the method's spec and its per-connection choices.

    Edge-popup leaves store their weight key and a bit mask; Slot Machine
    leaves their options key and the greedy option indices at
    ``ceil(log2 K)`` bits each (see the module docstring). Leaves the method
    does not select are stored as they are.

    Args:
        path: the ``.npz`` file to write (NumPy adds ``.npz`` if missing).
        reparam: the `Reparam` the network was trained with, whose ``spec``
            names a method with a registered codec: `randjax.edge_popup`
            with a named ``weight_init`` (so `load` can redraw the weights),
            or `randjax.slot_machine` with ``eval_selection="greedy"``.
        trainable: the trained scores tree.
        frozen: its frozen tree.
        key: the key given to ``reparam.init``; needed only when the weights
            or options are stored (``store_weights=True``), to record and
            check their keys. With ``store_weights=False`` the keys are in
            ``frozen``.

    Returns:
        An `ExportInfo` with the file size and the ratio to float32.

    Raises:
        ValueError: ``reparam`` has no exportable ``spec`` (a method without
            a codec, or edge-popup with an initializer callable); a Slot
            Machine that samples at evaluation; ``key`` is missing or is not
            the one the stored values were drawn from; a container other
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
    codec = _CODECS.get((spec or {}).get("method"))
    if codec is None or codec.encode is None:
        raise ValueError(
            "export.save supports Reparams whose spec names a method with a registered "
            f"codec ({[m for m in codec_names() if _CODECS[m].encode]}: edge_popup with "
            "a registered initializer name as weight_init, slot_machine); this one "
            f"has spec {spec!r}")
    paired = tree.pair(trainable, frozen, "export")
    key_paths = paired.paths()
    paths = [[_path_entry(k) for k in p] for p in key_paths]
    selected = [(t, f, jax.tree_util.keystr(p)) for t, f, p in
                zip(paired.trainable, paired.frozen, key_paths)
                if t is not None and f is not None]
    stored = iter(codec.encode(spec, selected, key))
    arrays, leaves, num_params = {}, [], 0
    for i, (t, f, p) in enumerate(zip(paired.trainable, paired.frozen, paths)):
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
    return write(path, spec, leaves, arrays, num_params)


def _leaf_arrays(arrays: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    suffix = f"_{index}"
    return {name[:-len(suffix)]: a for name, a in arrays.items() if name.endswith(suffix)}


def load(path: str | os.PathLike) -> PyTree:
    """Rebuilds the effective parameters that `save` (or a method's saver) exported.

    The file's codec (`get_codec` of the method its spec names) rebuilds
    every leaf stored in compact form: an edge-popup weight redrawn from its
    key with the same jitted draw as ``reparam.apply`` and multiplied by its
    unpacked mask; a Slot Machine's option of each unpacked index (its
    greedy network); a LaPerm vector gathered from the redrawn initial
    weights by its permutation. Other leaves come back as saved. The result
    is bitwise ``reparam.apply(trainable, frozen, train=False)`` (for LaPerm:
    the parameters saved).

    Args:
        path: a file written by `save` or `randjax.methods.laperm.save_permuted`.

    Returns:
        The effective parameters as nested dicts (and lists), with the
        paths of the original tree: feed them to the model's ``apply``.

    Raises:
        ValueError: the file is not a randjax export, or of a method with no
            registered codec; a permutation file's redrawn initial parameters
            do not match it.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    try:
        header = json.loads(arrays["spec"].tobytes())
        if header["format"] != FORMAT:
            raise KeyError("format")
        spec = header["spec"]
        codec = _CODECS[spec["method"]]
    except (KeyError, ValueError, TypeError, AttributeError):
        raise ValueError(f"{path} is not a randjax export ({FORMAT}) of a method in "
                         f"{codec_names()}") from None
    rebuild = codec.decode(spec, arrays)
    leaves = []
    for leaf in header["leaves"]:
        i = leaf["index"]
        if f"value_{i}" in arrays:
            leaves.append(jnp.asarray(arrays[f"value_{i}"]))
        else:
            leaves.append(rebuild(leaf, _leaf_arrays(arrays, i)))
    return _unflatten([leaf["path"] for leaf in header["leaves"]], leaves)
