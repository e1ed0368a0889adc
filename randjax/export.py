"""Compact export of networks whose weights are random draws.

An edge-popup network is fully described by the keys its frozen weights were
drawn from, the initializer's name and one bit per weight (kept or not):
`save` writes that (plus any leaf the method does not mask, as it is) to one
``.npz`` file, and `load` rebuilds the effective parameters, bitwise equal to
``reparam.apply(trainable, frozen)``, so the logits are identical. A
LeNet-300-100 shrinks about 32-fold against float32.

File layout (compressed NumPy ``.npz``, no pickles): ``spec`` (UTF-8 JSON bytes: the method's
`Reparam.spec` and, per leaf, its path, shape and dtype), and per leaf
``i``: ``key_i`` (raw key data) and ``mask_i`` (`numpy.packbits` of the
flattened mask) for a masked leaf, ``value_i`` for any other.

References:
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
    CVPR 2020 (Sec. 1: a network as a seed and a binary mask).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def _weight_keys(reparam, trainable, frozen, key, selected):
    """Raw key data of every selected leaf's weight, checked against frozen."""
    spec = reparam.spec
    weight_init = reparam_lib.scaled_init(spec["weight_init"], spec["density"],
                                          spec["scale_fan"])
    keys = []
    for index, (scores, weight, where) in enumerate(selected):
        if jnp.issubdtype(weight.dtype, jnp.floating):  # stored weights
            if key is None:
                raise ValueError(
                    "the frozen weights are stored (store_weights=True): pass key=, "
                    "the key given to reparam.init (randjax.train.reparam_key(seed) "
                    "after randjax.fit), or train with store_weights=False")
            weight_key = reparam_lib.leaf_keys(key, index)[1]
            drawn = reparam_lib._draw(weight_init, weight_key, scores.shape, scores.dtype)
            if not np.array_equal(np.asarray(drawn), np.asarray(weight)):
                raise ValueError(
                    f"the frozen weight {where} is not the draw of "
                    f"{spec['weight_init']!r} from key: was key the one given to "
                    "reparam.init?")
            keys.append(np.asarray(jax.random.key_data(weight_key)))
        else:
            keys.append(np.asarray(weight))
    return keys


def save(path: str | os.PathLike, reparam: reparam_lib.Reparam, trainable: PyTree,
         frozen: PyTree, *, key: jax.Array | None = None) -> ExportInfo:
    """Saves an edge-popup network as weight keys, initializer name and bit masks.

    Args:
        path: the ``.npz`` file to write (NumPy adds ``.npz`` if missing).
        reparam: the `randjax.edge_popup` `Reparam` the network was trained
            with, its ``weight_init`` a registered name (so `load` can redraw
            the weights).
        trainable: the trained scores tree.
        frozen: its frozen tree.
        key: the key given to ``reparam.init``; needed only when the weights
            are stored (``store_weights=True``), to record and check their
            keys. With ``store_weights=False`` the keys are in ``frozen``.

    Returns:
        An `ExportInfo` with the file size and the ratio to float32.

    Raises:
        ValueError: ``reparam`` has no exportable ``spec`` (not edge-popup,
            or ``weight_init`` not a name); ``key`` is missing or is not the
            one the stored weights were drawn from; a container other than
            dicts with string keys and lists.

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

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020.
    """
    spec = reparam.spec
    if not spec or spec.get("method") != "edge_popup":
        raise ValueError(
            "export.save supports randjax.edge_popup reparams whose weight_init is a "
            f"registered initializer name; this one has spec {spec!r}")
    treedef, t_leaves, f_leaves = reparam_lib._pair_leaves(trainable, frozen, "export")
    key_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(
        treedef.unflatten([0] * treedef.num_leaves))[0]]
    paths = [[_path_entry(k) for k in p] for p in key_paths]
    selected = [(t, f, jax.tree_util.keystr(p)) for t, f, p in
                zip(t_leaves, f_leaves, key_paths) if t is not None and f is not None]
    keys = _weight_keys(reparam, trainable, frozen, key, selected)
    masks = reparam_lib.edge_popup_masks([t for t, _, _ in selected], spec["density"],
                                         spec["scope"], spec["rounding"])
    arrays, leaves, masked, num_params = {}, [], iter(zip(keys, masks)), 0
    for i, (t, f, p) in enumerate(zip(t_leaves, f_leaves, paths)):
        if t is not None and f is not None:
            kd, mask = next(masked)
            arrays[f"key_{i}"] = kd
            arrays[f"mask_{i}"] = np.packbits(np.asarray(mask).ravel() != 0)
            leaf = t
        else:
            leaf = f if t is None else t
            if leaf is None:
                continue
            arrays[f"value_{i}"] = np.asarray(leaf)
        leaves.append(dict(index=i, path=p, shape=list(leaf.shape),
                           dtype=str(leaf.dtype), masked=f"mask_{i}" in arrays))
        num_params += leaf.size
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

    Each masked weight is redrawn by the named initializer from its key and
    multiplied by its unpacked mask, exactly as ``reparam.apply`` computes
    it; other leaves come back as saved.

    Args:
        path: a file written by `save`.

    Returns:
        The effective parameters as nested dicts (and lists), with the
        paths of the original tree: feed them to the model's ``apply``.

    Raises:
        ValueError: the file is not a randjax export.
    """
    with np.load(os.fspath(path), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    try:
        header = json.loads(arrays["spec"].tobytes())
        if header["format"] != FORMAT:
            raise KeyError("format")
    except (KeyError, ValueError, TypeError, AttributeError):
        raise ValueError(f"{path} is not a randjax export ({FORMAT})") from None
    spec = header["spec"]
    weight_init = reparam_lib.scaled_init(spec["weight_init"], spec["density"],
                                          spec["scale_fan"])
    leaves = []
    for leaf in header["leaves"]:
        i, shape, dtype = leaf["index"], tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])
        if not leaf["masked"]:
            leaves.append(jnp.asarray(arrays[f"value_{i}"]))
            continue
        weight = reparam_lib._draw(weight_init, jax.random.wrap_key_data(
            jnp.asarray(arrays[f"key_{i}"])), shape, dtype)
        bits = np.unpackbits(arrays[f"mask_{i}"], count=int(np.prod(shape)))
        leaves.append(weight * jnp.asarray(bits.reshape(shape), dtype))
    return _unflatten([leaf["path"] for leaf in header["leaves"]], leaves)
