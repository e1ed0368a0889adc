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

File layout (compressed NumPy ``.npz``, no pickles), format `FORMAT`
(``"randjax.export/2"``): ``spec``, the header as UTF-8 JSON bytes,
``{"format", "spec": the method's spec, "leaves": [{"index", "path", "shape",
"dtype", ...}], "digest"}``; per leaf ``i`` either ``value_i`` (stored as it
is) or the codec's arrays ``<name>_i`` (e.g. ``key_i`` and ``mask_i``); the
codec's file-level arrays (`Codec.file_arrays`, e.g. LaPerm's ``init_key``)
belong to the whole file. ``digest`` is the SHA-256 (hex) of the canonical
JSON (sorted keys, no spaces) of the rest of the header, then of every other
array in sorted name order (its name, dtype, shape and bytes), so `load`
refuses a file changed after writing. It also checks every structural
invariant (types, shapes, dtypes, array lengths, unique paths, registered
names, permutations), so a hand-made file with a fresh digest cannot load as
a silently different network either, and a digest mismatch names the first
such fault it finds. Files of the first format, ``"randjax.export/1"`` (no
digest), are refused: export the network again.

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

import hashlib
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from randjax import tree
from randjax.reparam import Reparam

PyTree = Any
FORMAT = "randjax.export/2"
_OLD_FORMATS = ("randjax.export/1",)
# Header fields saying whether a leaf is stored in compact form (`save` writes
# "masked", LaPerm's saver "permuted"); where present they must agree with the arrays.
_FLAGS = ("masked", "permuted")
_LEAF_ARRAY = re.compile(r"(.+)_(0|[1-9][0-9]*)")

__all__ = ["FORMAT", "Codec", "ExportInfo", "check_spec", "check_stored", "codec_names",
           "flatten_with_paths", "frozen_keys", "get_codec", "key_data_shape", "load",
           "path_str", "read_header", "register_codec", "save", "write"]


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
        file_arrays: names of the arrays that belong to the whole file, not
            to one leaf (LaPerm's ``("init_key",)``); `load` requires them and
            refuses any other array that no header leaf owns.

    `load` checks the header and the arrays' ownership before ``decode``;
    ``decode`` checks the spec's fields and ``rebuild`` a leaf's arrays
    (`check_spec`, `check_stored`), raising ValueError naming the field or
    array at fault.
    """

    decode: Callable[[dict, Mapping[str, np.ndarray]], Callable[[dict, dict], Any]]
    encode: Callable[[dict, list, jax.Array | None], list] | None = None
    file_arrays: tuple[str, ...] = ()


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


def path_str(path: list) -> str:
    """A `flatten_with_paths` path as `jax.tree_util.keystr` writes it: ``['a'][0]``."""
    return "".join(f"[{key!r}]" for _, key in path) or "(the whole tree)"


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
    measured against. The header's ``digest`` covers the header and every
    array (see the module docstring); `load` verifies it.
    """
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    header = {"format": FORMAT, "spec": spec, "leaves": leaves}
    header["digest"] = _digest(header, arrays)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    np.savez_compressed(path, spec=np.frombuffer(_canonical(header), np.uint8), **arrays)
    size = os.path.getsize(path)
    return ExportInfo(path, size, 4 * num_params, 4 * num_params / size)


def _canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _digest(header: dict, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the header without its ``digest`` and of every array but ``spec``."""
    digest = hashlib.sha256(_canonical({k: v for k, v in header.items() if k != "digest"}))
    for name in sorted(arrays):
        if name != "spec":
            a = np.ascontiguousarray(arrays[name])
            digest.update(f"\0{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
            digest.update(a.tobytes())
    return digest.hexdigest()


def read_header(arrays: Mapping[str, np.ndarray]) -> dict:
    """The JSON header of a file's arrays (its ``spec`` entry), for codecs.

    `load` has verified it (digest and structure) before a codec's ``decode``
    sees the arrays.

    Raises:
        ValueError: the ``spec`` entry is not UTF-8 JSON.
    """
    try:
        return json.loads(np.asarray(arrays["spec"]).tobytes())
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError
        raise ValueError("not a randjax export: its 'spec' entry is not UTF-8 JSON") from None


def key_data_shape() -> tuple[int, ...]:
    """The shape of a default-implementation key's raw data (uint32): ``(2,)`` for threefry."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def check_spec(spec: dict, checks: Mapping[str, Callable[[Any], Any]]) -> None:
    """Checks a file's spec fields for a codec's ``decode``: ``checks[name](spec[name])``.

    Raises:
        ValueError: a field is missing, or its check raised ValueError or
            TypeError; the message names the field (``spec field 'k': ...``).
    """
    for name, check in checks.items():
        if name not in spec:
            raise ValueError(f"spec field {name!r} is missing")
        try:
            check(spec[name])
        except (ValueError, TypeError) as error:
            raise ValueError(f"spec field {name!r}: {error}") from None


def check_stored(leaf: dict, stored: Mapping[str, np.ndarray],
                 expected: Mapping[str, tuple[Any, tuple[int, ...]]]) -> None:
    """Checks a leaf's arrays for a codec's ``rebuild``: exactly ``expected``'s names.

    Args:
        leaf: the leaf's header entry (its ``index`` names the arrays).
        stored: the leaf's arrays, ``_<index>`` suffix removed.
        expected: ``{name: (dtype, shape)}`` of every array the leaf needs.

    Raises:
        ValueError: an array is missing, unexpected, or of another dtype or
            shape; the message names the file's array (``'mask_3'``).
    """
    index = leaf["index"]
    for name in stored:
        if name not in expected:
            raise ValueError(f"unexpected array '{name}_{index}' (the leaf stores "
                             f"{sorted(f'{n}_{index}' for n in expected)})")
    for name, (dtype, shape) in expected.items():
        if name not in stored:
            raise ValueError(f"array '{name}_{index}' is missing")
        a, dtype, shape = stored[name], np.dtype(dtype), tuple(shape)
        if a.dtype != dtype or a.shape != shape:
            raise ValueError(f"array '{name}_{index}' must be {dtype} of shape {shape}, "
                             f"got {a.dtype} of shape {a.shape}")


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


def load(path: str | os.PathLike) -> PyTree:
    """Rebuilds the effective parameters that `save` (or a method's saver) exported.

    The file is verified first: its digest (the header and every array
    must be those written) and every structural invariant (see Raises).
    The file's codec (`get_codec` of the method its spec names) then
    rebuilds every leaf stored in compact form: an edge-popup weight
    redrawn from its key with the same jitted draw as ``reparam.apply`` and
    multiplied by its unpacked mask; a Slot Machine's option of each
    unpacked index (its greedy network); a LaPerm vector gathered from the
    redrawn initial weights by its permutation. Other leaves come back as
    saved. The result is bitwise ``reparam.apply(trainable, frozen,
    train=False)`` (for LaPerm: the parameters saved).

    Args:
        path: a file written by `save` or `randjax.methods.laperm.save_permuted`.

    Returns:
        The effective parameters as nested dicts (and lists), with the
        paths of the original tree: feed them to the model's ``apply``.

    Raises:
        FileNotFoundError: no file at ``path`` (other errors of opening it,
            e.g. a directory, pass as the OSError they are).
        ValueError: the file cannot be loaded as the network written. The
            message starts with the path and names the header field, spec
            field, array or leaf at fault: an empty file; a file that is not
            a zip (``.npz``) file (text, a ``.npy`` array); a truncated or
            damaged zip file; a ``.npz`` file without a ``spec`` entry or
            whose header is not a randjax export's; the old format
            ``randjax.export/1`` (no digest: export the network again); a
            digest mismatch (the header or an array changed, added or
            removed after writing; the message adds the first structural
            fault below it finds, if any); a header field of the wrong type
            (``leaves[k]``'s ``index``, ``path``, ``shape``, ``dtype``,
            ``masked`` or ``permuted``); duplicate indices or paths, or paths
            that do not form one tree of dicts and lists; a method without a
            codec or a spec field its codec cannot use (an unregistered
            initializer name); an array no leaf owns, a missing array, or one
            of the wrong dtype or shape (a truncated mask, a ``value_i`` that
            is not the header's shape and dtype); out-of-range contents (slot
            indices ``>= k``, a permutation with a repeated index, a Lehmer
            code ``>= n!``, bits set in a packed array's padding); a LaPerm
            file whose leaves are not its model's (paths, shapes, dtypes).
    """
    name = os.fspath(path)
    arrays = _read(name)
    try:
        return _verified_params(arrays)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


_CHANGED = "digest mismatch: the file was modified or damaged after writing"


def _verified_params(arrays: Mapping[str, np.ndarray]) -> PyTree:
    """The rebuilt parameters; ValueError if the digest or a structural check fails."""
    header = _verified_header(arrays)
    intact = header["digest"] == _digest(header, arrays)
    try:
        codec, stored = _check_structure(header, arrays)
        params = _rebuild(codec, header, arrays, stored)
    except ValueError as error:
        if intact:
            raise
        raise ValueError(f"{_CHANGED}; the first fault found: {error}") from None
    if not intact:
        raise ValueError(f"{_CHANGED} (its header and arrays are otherwise well-formed)")
    return params


# ---------------------------------------------------------------------------
# Verifying a file: the container, the digest, the header's structure.

_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError)


def _read(name: str) -> dict[str, np.ndarray]:
    """Every array of the file; ValueError if it is empty, not a zip or damaged."""
    with open(name, "rb") as file:
        magic = file.read(4)
    if not magic:
        raise ValueError(f"{name} is empty (0 bytes), not a randjax export")
    if magic != b"PK\x03\x04":
        what = "a .npy array" if magic == b"\x93NUM" else "not a zip (.npz) file"
        raise ValueError(f"{name} is not a randjax export: it is {what}")
    try:
        data = np.load(name, allow_pickle=False)
    except _READ_ERRORS as error:
        raise ValueError(f"{name} is truncated or damaged: a zip file that cannot be "
                         f"read ({error})") from None
    with data:
        if "spec" not in data.files:
            raise ValueError(f"{name} is not a randjax export: a .npz file without a "
                             f"'spec' entry (it has {data.files})")
        return {entry: _read_entry(name, data, entry) for entry in data.files}


def _read_entry(name: str, data, entry: str) -> np.ndarray:
    try:
        return data[entry]
    except _READ_ERRORS as error:
        raise ValueError(f"{name} is truncated or damaged: its array {entry!r} cannot "
                         f"be read ({error})") from None


def _verified_header(arrays: Mapping[str, np.ndarray]) -> dict:
    header = read_header(arrays)
    if not isinstance(header, dict) or "format" not in header:
        raise ValueError("not a randjax export: its 'spec' entry is JSON without a "
                         "'format' field")
    if header["format"] in _OLD_FORMATS:
        raise ValueError(f"written in the format {header['format']!r}, which has no "
                         f"digest; this randjax reads {FORMAT!r}: export the network again")
    if header["format"] != FORMAT:
        raise ValueError(f"header field 'format' is {_short(header['format'])}, "
                         f"not {FORMAT!r}")
    if not isinstance(header.get("digest"), str):
        raise ValueError(f"header field 'digest' must be a SHA-256 hex string, got "
                         f"{_short(header.get('digest'))}")
    return header


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_path(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(entry, list) and len(entry) == 2
        and ((entry[0] == "dict" and isinstance(entry[1], str))
             or (entry[0] == "list" and _is_count(entry[1])))
        for entry in value)


def _is_dtype(value) -> bool:
    try:
        dtype = jnp.dtype(value) if isinstance(value, str) and value else None
    except TypeError:
        return False
    return dtype is not None and (jnp.issubdtype(dtype, jnp.number) or dtype == jnp.bool_)


_LEAF_FIELDS = (
    ("index", _is_count, "a non-negative int"),
    ("path", _is_path, "a list of ['dict', str] and ['list', int] pairs"),
    ("shape", lambda v: isinstance(v, list) and all(map(_is_count, v)),
     "a list of non-negative ints"),
    ("dtype", _is_dtype, "the name of a NumPy number or bool dtype"),
)


def _check_leaf(k: int, leaf) -> None:
    if not isinstance(leaf, dict):
        raise ValueError(f"header leaves[{k}] must be a dict, got {_short(leaf)}")
    fields = [*_LEAF_FIELDS, *((flag, lambda v: isinstance(v, bool), "a bool")
                               for flag in _FLAGS if flag in leaf)]
    for field, valid, what in fields:
        if field not in leaf:
            raise ValueError(f"header leaves[{k}] has no field {field!r}")
        if not valid(leaf[field]):
            raise ValueError(f"header leaves[{k}] field {field!r} must be {what}, "
                             f"got {_short(leaf[field])}")


def _check_paths(leaves: list[dict]) -> None:
    """Unique indices and paths, forming one tree of dicts and lists."""
    seen = {"index": {}, "path": {}}
    children: dict[tuple, set] = {}
    for k, leaf in enumerate(leaves):
        path = tuple(map(tuple, leaf["path"]))
        for field, value in (("index", leaf["index"]), ("path", path)):
            if value in seen[field]:
                shown = path_str(path) if field == "path" else value
                raise ValueError(f"header leaves[{k}] field {field!r}: {shown} is also "
                                 f"that of leaves[{seen[field][value]}]")
            seen[field][value] = k
        for depth in range(len(path)):
            children.setdefault(path[:depth], set()).add(path[depth])
    for node, entries in children.items():
        if node in seen["path"]:
            raise ValueError(f"header leaves[{seen['path'][node]}] field 'path': "
                             f"{path_str(node)} is a leaf and also holds other leaves")
        kinds, keys = {kind for kind, _ in entries}, [key for _, key in entries]
        if len(kinds) > 1:
            raise ValueError(f"header field 'leaves': the paths mix dict keys and list "
                             f"indices under {path_str(node)}")
        if kinds == {"list"} and sorted(keys) != list(range(len(keys))):
            raise ValueError(f"header field 'leaves': the list at {path_str(node)} has "
                             f"indices {sorted(keys)}, not 0..{len(keys) - 1}")


def _check_structure(header: dict, arrays: Mapping[str, np.ndarray]
                     ) -> tuple[Codec, list[dict]]:
    """The file's codec and each leaf's arrays, after checking the header."""
    spec, leaves = header.get("spec"), header.get("leaves")
    if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
        raise ValueError(f"header field 'spec' must be a dict naming a 'method', "
                         f"got {_short(spec)}")
    try:
        codec = get_codec(spec["method"])
    except ValueError as error:
        raise ValueError(f"spec field 'method': {error}") from None
    if not isinstance(leaves, list) or not leaves:
        raise ValueError(f"header field 'leaves' must be a non-empty list, "
                         f"got {_short(leaves)}")
    for k, leaf in enumerate(leaves):
        _check_leaf(k, leaf)
    _check_paths(leaves)
    return codec, _owned_arrays(arrays, leaves, codec, spec["method"])


def _owned_arrays(arrays: Mapping[str, np.ndarray], leaves: list[dict], codec: Codec,
                  method: str) -> list[dict]:
    """Each leaf's arrays (``value`` or the codec's), suffix removed; no array unowned."""
    owned: dict[int, dict] = {leaf["index"]: {} for leaf in leaves}
    for name, a in arrays.items():
        if name == "spec" or name in codec.file_arrays:
            continue
        match = _LEAF_ARRAY.fullmatch(name)
        if match is None or int(match[2]) not in owned:
            others = (f"file-level arrays are {list(codec.file_arrays)}"
                      if codec.file_arrays else "has no file-level arrays")
            raise ValueError(f"unexpected array {name!r}: no header leaf owns it and the "
                             f"{method} codec {others}")
        owned[int(match[2])][match[1]] = a
    for name in codec.file_arrays:
        if name not in arrays:
            raise ValueError(f"array {name!r} is missing")
    for leaf in leaves:
        _check_owned(leaf, owned[leaf["index"]])
    return [owned[leaf["index"]] for leaf in leaves]


def _check_owned(leaf: dict, stored: dict) -> None:
    i = leaf["index"]
    where = f"leaf {i} {path_str(leaf['path'])}"
    if not stored:
        raise ValueError(f"{where} has no arrays (neither 'value_{i}' nor its codec's)")
    compact = "value" not in stored
    if not compact and len(stored) > 1:
        raise ValueError(f"{where} has 'value_{i}' and also "
                         f"{sorted(f'{n}_{i}' for n in stored if n != 'value')}")
    for flag in _FLAGS:
        if leaf.get(flag, compact) != compact:
            how = "in its codec's compact form" if compact else f"as 'value_{i}'"
            raise ValueError(f"{where}: header field {flag!r} is {leaf[flag]}, but the "
                             f"leaf is stored {how}")
    if not compact:
        value, dtype, shape = stored["value"], jnp.dtype(leaf["dtype"]), tuple(leaf["shape"])
        if value.dtype != dtype or value.shape != shape:
            raise ValueError(f"{where}: array 'value_{i}' is {value.dtype} of shape "
                             f"{value.shape}, the header's fields 'dtype' and 'shape' "
                             f"say {dtype} of shape {shape}")


# ---------------------------------------------------------------------------
# Rebuilding the verified file.


def _rebuild(codec: Codec, header: dict, arrays: Mapping[str, np.ndarray],
             stored: list[dict]) -> PyTree:
    spec, leaves = header["spec"], header["leaves"]
    try:
        rebuild = codec.decode(spec, arrays)
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(f"the {spec['method']} codec cannot read the spec "
                         f"{_short(spec)}: {error!r}") from error
    out = [jnp.asarray(s["value"]) if "value" in s
           else _rebuild_leaf(rebuild, spec["method"], leaf, s)
           for leaf, s in zip(leaves, stored)]
    return _unflatten([leaf["path"] for leaf in leaves], out)


def _rebuild_leaf(rebuild: Callable, method: str, leaf: dict, stored: dict) -> jax.Array:
    where = f"leaf {leaf['index']} {path_str(leaf['path'])}"
    try:
        out = jnp.asarray(rebuild(leaf, stored))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{where}: the {method} codec cannot rebuild it from its arrays "
                         f"{sorted(stored)}: {error!r}") from error
    shape, dtype = tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"{where}: the {method} codec rebuilt {out.dtype} of shape "
                         f"{out.shape}, the header says {dtype} of shape {shape}")
    return out
