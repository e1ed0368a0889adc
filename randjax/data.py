"""Image classification data sets as in-memory numpy arrays, plus jittable batching.

Data sources (nothing is ever downloaded at run time):

* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1,797 real
  images, 10 classes). Always available; the embedded default. It has no
  official test split, so a fixed 20% test split is carved with a permutation
  that does not depend on the user's ``seed``.
* IDX files in the MNIST layout (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally ``.gz``). `load` looks for
  them, in order, in ``data_dir/<name>``, ``data_dir``,
  ``$RANDJAX_DATA_DIR/<name>``, the Debian package directory of the data set
  (``/usr/share/datasets/fashion-mnist`` from ``apt-get install
  dataset-fashion-mnist``) and ``name`` itself when it is a directory path.
  A gzipped file is decompressed once: its IDX bytes are kept under
  `decoded_cache_dir` (``~/.cache/randjax/idx``; ``RANDJAX_DATA_CACHE=off``
  turns it off) and read from there while the file stays the same.
* Any *prepared* TensorFlow Datasets data set, read with
  ``tfds.data_source`` (random access, no TensorFlow needed) from ``data_dir``
  or the default tfds directory, with ``download=False``.

`load` returns a `Dataset` with float32 NHWC images normalised
with per-channel statistics of the training split (after the validation split
has been carved from it) and int32 labels. `shuffle_batches` and
`augment` are pure ``jax.numpy`` helpers for the device-side training
loop.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from randjax import permute, tree

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "Split",
    "augment",
    "decoded_cache_dir",
    "load",
    "pad_to_chunks",
    "read_idx",
    "shuffle_batches",
    "write_idx",
]

#: Environment variable naming a directory that holds ``<name>/`` IDX folders.
DATA_DIR_ENV = "RANDJAX_DATA_DIR"
#: Environment variable naming `decoded_cache_dir` (``off``: no cache).
DATA_CACHE_ENV = "RANDJAX_DATA_CACHE"
#: Directories installed by Debian data set packages, by data set name.
SYSTEM_DATA_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
#: Debian packages providing the directories above.
SYSTEM_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
#: Class counts of the data sets `load` knows by name (from IDX files too).
KNOWN_CLASSES = {"digits": 10, "fashion_mnist": 10, "mnist": 10}
NORMALIZATIONS = ("standardize", "unit")

# IDX dtype codes (big-endian on disk).
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class Split(NamedTuple):
    """One split of a data set: float32 NHWC images and int32 labels."""

    x: np.ndarray
    y: np.ndarray


def pad_to_chunks(split: Split, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``split`` zero-padded to a whole number of ``chunk``-sized chunks.

    Returns:
        ``(x, y, valid)``: the padded images and labels and a float32 vector,
        1 for the real examples and 0 for the padding, so that jitted
        evaluation sums over fixed-size chunks and weighs out the padding.
    """
    n = len(split.y)
    pad = -n % chunk
    x = np.concatenate([split.x, np.zeros((pad, *split.x.shape[1:]), split.x.dtype)])
    y = np.concatenate([split.y, np.zeros((pad,), split.y.dtype)])
    valid = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return x, y, valid


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set; every split is normalised with the train statistics."""

    name: str
    train: Split = dataclasses.field(repr=False)
    val: Split = dataclasses.field(repr=False)
    test: Split = dataclasses.field(repr=False)
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray


class DatasetNotFoundError(FileNotFoundError):
    """The data set is in none of the places `load` looks."""


class _Raw(NamedTuple):
    """Unnormalised train and test splits as read, before any check.

    ``num_classes`` is the source's own count (tfds ``dataset_info``) or
    None; ``sources`` name where the train and test labels come from (file
    paths, ``tfds <name> train``, ...), for error messages.
    """

    train: Split
    test: Split
    num_classes: int | None
    sources: tuple[str, str]


# --------------------------------------------------------------------------- IDX


def read_idx(path) -> np.ndarray:
    """Reads an IDX file (gzip-compressed when ``path`` ends with ``.gz``).

    Args:
        path: file path.

    Returns:
        The array, in native byte order, with the shape stored in the header.

    Raises:
        ValueError: naming the file, on a corrupt gzip stream, a bad magic
            number, an unknown dtype code, or a data length that differs from the
            one the header announces.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)   # one call: faster than streaming reads
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(f"{path}: bad IDX magic number {data[:4].hex() or '(empty file)'}")
    if data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{data[2]:02X}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    expected, found = int(np.prod(shape)) * dtype.itemsize, len(data) - header
    if found != expected:
        what = "truncated data" if found < expected else "trailing bytes after the data"
        raise ValueError(
            f"{path}: {what}: header shape {shape} of {dtype.name} needs {expected} "
            f"data bytes, file has {found}"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Writes ``array`` as an IDX file (gzip-compressed when ``path`` ends with ``.gz``).

    Args:
        path: file path.
        array: array of dtype uint8, int8, int16, int32, float32 or float64.

    Raises:
        ValueError: on any other dtype, or more than 255 dimensions.
    """
    path, array = os.fspath(path), np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"write_idx({path!r}): unsupported dtype {array.dtype}; IDX stores "
            "uint8, int8, int16, int32, float32 or float64 (cast first)"
        )
    if array.ndim > 255:
        raise ValueError(f"write_idx({path!r}): {array.ndim} dimensions, IDX allows at most 255")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
    if path.endswith(".gz"):
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def _idx_paths(directory: str) -> dict[str, str] | None:
    """Paths of the four MNIST-layout IDX files in ``directory``, or None."""
    paths = {}
    for key, stem in _IDX_FILES.items():
        found = [p for p in (stem, stem + ".gz") if os.path.isfile(os.path.join(directory, p))]
        if not found:
            return None
        paths[key] = os.path.join(directory, found[0])
    return paths


def decoded_cache_dir() -> str | None:
    """Where `load` keeps the decompressed copies of gzipped IDX files; None: nowhere.

    ``$RANDJAX_DATA_CACHE`` (``off`` turns the copies off), else
    ``$XDG_CACHE_HOME/randjax/idx`` (``~/.cache/randjax/idx``). Decompressing
    Fashion-MNIST's training images takes most of its load time; the copy
    is read in a fraction of it. A copy is named after its file's path,
    size and modification time, so a changed file is decompressed anew;
    delete the directory to reclaim the space.
    """
    chosen = os.environ.get(DATA_CACHE_ENV)
    if chosen == "off":
        return None
    if chosen:
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "randjax", "idx")


def _read_idx_decoded_once(path: str) -> np.ndarray:
    """`read_idx`, decompressing a ``.gz`` file only when `decoded_cache_dir` has no copy."""
    cache = decoded_cache_dir()
    if not path.endswith(".gz") or cache is None:
        return read_idx(path)
    stat = os.stat(path)
    tag = hashlib.sha256(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"
                         .encode()).hexdigest()[:16]
    copy = os.path.join(cache, f"{os.path.basename(path)[:-3]}-{tag}")
    try:
        return read_idx(copy)
    except (OSError, ValueError):   # no copy yet, or a damaged one: decompress
        pass
    array = read_idx(path)
    try:   # written whole, then renamed: readers never see a partial copy
        os.makedirs(cache, exist_ok=True)
        partial = f"{copy}.{os.getpid()}.partial"
        write_idx(partial, array)
        os.replace(partial, copy)
    except OSError:   # a read-only or full cache: this run decompresses, that is all
        pass
    return array


def _load_idx_dir(paths: dict[str, str]) -> _Raw:
    """Reads the four IDX files into ([0, 1] float32 NHWC, int) train/test splits."""
    arrays = {key: _read_idx_decoded_once(p) for key, p in paths.items()}
    splits = []
    for part in ("train", "test"):
        x, y = arrays["x_" + part], arrays["y_" + part]
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{paths['x_' + part]}, {paths['y_' + part]}: need images (N, H, W[, C]) and "
                f"labels (N,), got {x.shape} and {y.shape}"
            )
        splits.append(Split(_as_images(x, paths["x_" + part]), y))
    return _Raw(splits[0], splits[1], None, (paths["y_train"], paths["y_test"]))


# -------------------------------------------------------------------------- tfds


def _load_tfds(name: str, data_dir: str | None) -> _Raw | str:
    """Reads a prepared tfds data set; returns a reason string when it is not there."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        return f"tensorflow_datasets is not importable ({e})"
    root = data_dir or tfds.core.constants.get_default_data_dir()
    try:
        sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
    except (ValueError, NotImplementedError, FileNotFoundError, KeyError, AssertionError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"tfds data_dir {root}: {name!r} is not prepared there ({reason})"
    splits = []
    for source in sources:
        records = [source[i] for i in range(len(source))]
        if records and not {"image", "label"} <= set(records[0]):
            raise ValueError(f"tfds {name}: need 'image' and 'label' features, "
                             f"got {sorted(records[0])}")
        x = np.stack([np.asarray(r["image"]) for r in records])
        if x.ndim == 3:  # grayscale stored without a channel axis
            x = x[..., None]
        y = np.asarray([r["label"] for r in records])
        splits.append(Split(_as_images(x, f"tfds {name}"), y))
    try:
        num_classes = int(sources[0].dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        num_classes = None
    return _Raw(splits[0], splits[1], num_classes, (f"tfds {name} train", f"tfds {name} test"))


# ------------------------------------------------------------------------ digits


def _load_digits() -> _Raw:
    """scikit-learn's 8x8 digits with a fixed, seed-independent 20% test split."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = round(0.2 * len(y))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return _Raw(Split(x[train], y[train]), Split(x[test], y[test]), 10,
                ("digits train", "digits test"))


# ----------------------------------------------------------------------- helpers


def _as_images(x: np.ndarray, source: str) -> np.ndarray:
    """NHWC images: uint8 kept as bytes (`_normalized` converts them once), floats as float32.

    Floating images are taken to be in [0, 1] already.
    """
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"{source}: images must be uint8 or floating point, got {x.dtype}")


def _byte_levels() -> np.ndarray:
    """The 256 float32 values uint8 pixels stand for in [0, 1]: ``float32(v) / 255``."""
    return np.arange(256, dtype=np.float32) / np.float32(255.0)


def _byte_counts(x: np.ndarray) -> np.ndarray:
    """``(256,)`` int64 counts of the values of a uint8 array.

    Counts pixel pairs (a uint16 view: half the elements `np.bincount` must
    widen), a million at a time (its widened copy stays small instead of
    faulting in hundreds of MB), and folds the 65,536 pair counts back into
    bytes.
    """
    flat = np.ascontiguousarray(x).reshape(-1)
    halves = flat[:flat.size // 2 * 2].view(np.uint16)
    pairs = np.zeros(1 << 16, np.int64)
    for start in range(0, halves.size, 1 << 20):
        pairs += np.bincount(halves[start:start + (1 << 20)], minlength=1 << 16)
    pairs = pairs.reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if flat.size % 2:
        counts[flat[-1]] += 1
    return counts


def _candidate_dirs(name: str, data_dir: str | None) -> list[str]:
    """Directories that may hold IDX files for ``name``, in lookup order."""
    dirs = []
    if data_dir is not None:
        dirs += [os.path.join(data_dir, name), data_dir]
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(os.path.join(os.environ[DATA_DIR_ENV], name))
    if name in SYSTEM_DATA_DIRS:
        dirs.append(SYSTEM_DATA_DIRS[name])
    if os.sep in name or os.path.isdir(name):
        dirs.append(name)
    return list(dict.fromkeys(os.fspath(d) for d in dirs))


def _not_found(name: str, looked: list[str]) -> DatasetNotFoundError:
    """The error listing every place looked and how to obtain the data set."""
    how = [f"set {DATA_DIR_ENV} to a directory holding {name}/ with the IDX files "
           f"({', '.join(_IDX_FILES.values())}, optionally .gz), or pass data_dir=",
           f"prepare it with tfds on a machine with network (`tfds build {name}`) and "
           "pass that tfds directory as data_dir= (--data_dir)"]
    if name in SYSTEM_PACKAGES:
        how.insert(0, f"apt-get install {SYSTEM_PACKAGES[name]}  "
                      f"(installs {SYSTEM_DATA_DIRS[name]})")
    return DatasetNotFoundError(
        f"data set {name!r} not found. Looked in:\n"
        + "".join(f"  - {place}\n" for place in looked)
        + "To obtain it:\n"
        + "".join(f"  - {h}\n" for h in how)
    )


def _find_raw(name: str, data_dir: str | None) -> _Raw:
    """Unnormalised ([0, 1]) train and test splits of ``name`` from the first source found."""
    if name == "digits":
        return _load_digits()
    looked = []
    for directory in _candidate_dirs(name, data_dir):
        paths = _idx_paths(directory)
        if paths is not None:
            return _load_idx_dir(paths)
        state = "no MNIST-layout IDX files" if os.path.isdir(directory) else "does not exist"
        looked.append(f"{directory} ({state})")
    if os.sep in name:  # a path, not a tfds name
        raise _not_found(name, looked)
    result = _load_tfds(name, None if data_dir is None else os.fspath(data_dir))
    if isinstance(result, str):
        raise _not_found(name, looked + [result])
    return result


def _carve_validation(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Moves a seeded random ``val_fraction`` of ``train`` into a validation split."""
    n = len(train.y)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(val_fraction * n)
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples out of {n}")
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])


def _expected_classes(name: str, raw: _Raw, num_classes: int | None) -> tuple[int | None, str]:
    """The class count the labels must fit, and where it comes from (None: infer it)."""
    if num_classes is not None:
        return num_classes, f"num_classes={num_classes} was given"
    if raw.num_classes is not None:
        return raw.num_classes, (f"the data set's own info says {raw.num_classes} classes; "
                                 "pass num_classes= to override")
    if name in KNOWN_CLASSES:
        return KNOWN_CLASSES[name], (f"{name} has {KNOWN_CLASSES[name]} classes; pass "
                                     "num_classes= to override")
    return None, ""


def _class_gaps(present: np.ndarray, top: int, limit: int = 3) -> str:
    """The first ``limit`` runs of ``[0, top]`` missing from the sorted ``present``."""
    edges = np.concatenate([[-1], present[(present >= 0) & (present <= top)], [top + 1]])
    starts = np.flatnonzero(np.diff(edges) > 1)
    runs = [(int(edges[i]) + 1, int(edges[i + 1]) - 1) for i in starts[:limit]]
    text = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)
    return text + (", ..." if len(starts) > limit else "")


def _check_labels(name: str, raw: _Raw, num_classes: int | None) -> int:
    """The class count of ``raw``'s labels; ValueError naming their file and first bad index.

    With a known count (given, from the source or `KNOWN_CLASSES`) every label
    must lie in ``[0, count)``. Otherwise the count is the largest label + 1,
    and every class below it must occur in the training labels: one stray
    label (250 among 0..9) would otherwise make a 251-class data set.
    """
    labeled = [(raw.train.y, raw.sources[0]), (raw.test.y, raw.sources[1])]
    for y, source in labeled:
        if len(y) and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{source}: labels must be integers, got {y.dtype}")
    labeled = [(y, source) for y, source in labeled if len(y)]
    if not labeled:
        raise ValueError(f"{name}: neither split holds a label")
    expected, why = _expected_classes(name, raw, num_classes)
    for y, source in labeled:
        bad = np.flatnonzero((y < 0) | (y >= (expected or np.inf)))
        if bad.size:
            bound = f"[0, {expected})" if expected else "[0, inf)"
            raise ValueError(f"{source}: label {y[bad[0]]} at index {bad[0]} is outside "
                             f"{bound}{f' ({why})' if why else ''}")
    if expected is not None:
        return expected
    top = max(int(y.max()) for y, _ in labeled)
    present = np.unique(raw.train.y)
    if present.size < top + 1:
        y, source = next((y, s) for y, s in labeled if (y == top).any())
        train = "" if source == raw.sources[0] else f" ({raw.sources[0]})"
        raise ValueError(
            f"{source}: label {top} at index {int(np.argmax(y == top))} makes {top + 1} "
            f"classes, but the training labels{train} hold no {_class_gaps(present, top)}; "
            f"pass num_classes={top + 1} to accept them")
    return top + 1


def _channel_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64 accumulation) of NHWC images in [0, 1]; std 0 -> 1.

    For uint8 images the sums run over the 256 pixel values weighted by their
    counts: the float32 arithmetic per value is that of the float path, only
    the float64 summation order differs.
    """
    if x.dtype == np.uint8:
        counts = np.stack([_byte_counts(x[..., c]) for c in range(x.shape[-1])], axis=1)
        n = counts.sum(axis=0)
        levels = _byte_levels()[:, None]
        mean = (counts * levels.astype(np.float64)).sum(axis=0) / n
        centered = levels - mean.astype(np.float32)
        var = (counts * np.square(centered).astype(np.float64)).sum(axis=0) / n
    else:
        mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
        centered = x - mean.astype(np.float32)
        var = np.square(centered, out=centered).mean(axis=(0, 1, 2), dtype=np.float64)
    std = np.sqrt(var)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def _normalized(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 ``(x - mean) / std`` of images in [0, 1] (uint8: ``x / 255`` first).

    Works through blocks of images small enough to stay in the CPU's cache:
    one pass over memory instead of one per operation and no full-size
    temporaries (several times faster on Fashion-MNIST), with the same
    float32 operations, so the same bits.
    """
    out = np.empty(x.shape, np.float32)
    block = max(1, (1 << 18) // max(1, math.prod(x.shape[1:])))
    for start in range(0, len(x), block):
        part, source = out[start:start + block], x[start:start + block]
        if x.dtype == np.uint8:
            np.divide(source, np.float32(255.0), out=part, dtype=np.float32)
        else:
            part[...] = source
        part -= mean
        part /= std
    return out


def _check_data_dir(data_dir) -> str | None:
    """``data_dir`` as a string, or None; ValueError unless an existing directory."""
    if data_dir is None:
        return None
    if not isinstance(data_dir, str | os.PathLike):
        raise ValueError(f"data_dir must be None or a directory path, got {data_dir!r}")
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        state = "is not a directory" if os.path.exists(data_dir) else "does not exist"
        raise ValueError(
            f"data_dir {data_dir!r} {state} (load looks nowhere else when data_dir is "
            f"wrong: not in ${DATA_DIR_ENV}, nor in the system directories)")
    return data_dir


def _check_arguments(name, data_dir, val_fraction, seed, normalize, num_classes):
    """`load`'s argument checks, before anything is read."""
    if not isinstance(name, str | os.PathLike):
        raise ValueError(f"name must be a data set name or a directory path, got {name!r}")
    tree.check_choice(normalize, NORMALIZATIONS, "normalize")
    if tree.check_real(val_fraction, "val_fraction", low=0.0) >= 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    tree.check_int(seed, "seed", minimum=0)
    if num_classes is not None:
        tree.check_int(num_classes, "num_classes", minimum=1)
    return _check_data_dir(data_dir)


def load(
    name: str,
    *,
    data_dir: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: str = "standardize",
    num_classes: int | None = None,
) -> Dataset:
    """Loads an image classification data set into memory.

    Args:
        name: ``"digits"``, ``"fashion_mnist"``, ``"mnist"``, a directory of
            MNIST-layout IDX files, or the name of a prepared tfds data set.
        data_dir: directory searched first for IDX files (``data_dir/<name>``,
            then ``data_dir``) and used as the tfds data directory; it must
            exist (a wrong one is an error, not a fall-back to the other
            places).
        val_fraction: fraction of the training split moved to validation, in
            ``[0, 1)``; ``0`` gives an empty validation split.
        seed: seed of the validation carve-out permutation.
        normalize: ``"standardize"`` (scale to [0, 1], then per-channel zero mean
            and unit std with training-split statistics) or ``"unit"`` ([0, 1]).
        num_classes: the number of classes; every label must lie in
            ``[0, num_classes)``. None takes it from the source (tfds), from
            the name (`KNOWN_CLASSES`: 10 for digits, mnist, fashion_mnist)
            or, for other IDX data, as the largest label + 1, refusing labels
            that leave a class below it without a training example.

    Returns:
        A `Dataset` with float32 NHWC images and int32 labels.

    Raises:
        ValueError: on an invalid argument (the message names it; a
            ``data_dir`` that does not exist included) or malformed data: a
            label outside the classes or a stray label (the message names the
            labels' file, the index and the value).
        DatasetNotFoundError: when the data set is nowhere to be found; the
            message lists every place looked and how to obtain the data.
    """
    data_dir = _check_arguments(name, data_dir, val_fraction, seed, normalize, num_classes)
    name = os.fspath(name)
    raw = _find_raw(name, data_dir)
    if raw.train.x.shape[1:] != raw.test.x.shape[1:]:
        raise ValueError(f"{name}: train images {raw.train.x.shape[1:]} != test images "
                         f"{raw.test.x.shape[1:]}")
    num_classes = _check_labels(name, raw, num_classes)
    as_int32 = lambda s: Split(s.x, s.y.astype(np.int32))
    train, val = map(as_int32, _carve_validation(raw.train, val_fraction, seed))
    test = as_int32(raw.test)
    channels = train.x.shape[-1]
    mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    if normalize == "standardize":
        mean, std = _channel_statistics(train.x)
    if normalize == "standardize" or train.x.dtype == np.uint8:
        train, val, test = (Split(_normalized(s.x, mean, std), s.y) for s in (train, val, test))
    return Dataset(name, train, val, test, int(num_classes), tuple(train.x.shape[1:]), mean, std)


# ------------------------------------------------------------ device-side helpers


def shuffle_batches(key: jax.Array, num_examples: int,
                    batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A random permutation of ``range(num_examples)`` cut into batches of indices.

    The permutation is ``jax.random.permutation(key, num_examples)``'s, drawn
    faster on CPU (`randjax.permute.random_permutation`). Jittable with
    ``num_examples`` and ``batch_size`` static.

    Args:
        key: PRNG key.
        num_examples: number of examples (Python int).
        batch_size: batch size (Python int, >= 1).

    Returns:
        ``(full, rest)``: int32 ``full`` of shape
        ``(num_examples // batch_size, batch_size)`` and the remaining indices
        ``rest`` of shape ``(num_examples % batch_size,)``.

    Raises:
        ValueError: ``num_examples`` not an int >= 0 or ``batch_size`` not an
            int >= 1.
    """
    num_examples = tree.check_int(num_examples, "num_examples", minimum=0)
    batch_size = tree.check_int(batch_size, "batch_size", minimum=1)
    perm = permute.random_permutation(key, num_examples)
    n_full = (num_examples // batch_size) * batch_size
    return perm[:n_full].reshape(-1, batch_size), perm[n_full:]


def augment(key: jax.Array, x: jax.Array, *, crop_padding: int = 0, flip: bool = False,
            pad_value=0.0) -> jax.Array:
    """Random crops after padding and random horizontal flips of an NHWC batch.

    Each image gets its own crop offset in ``[0, 2 * crop_padding]`` on both
    axes and is mirrored left-right with probability 0.5 when ``flip``.
    The identity when ``crop_padding == 0`` and not ``flip``. Jittable.

    Args:
        key: PRNG key.
        x: images, shape ``(N, H, W, C)``.
        crop_padding: pixels added on each side before cropping back to ``(H, W)``.
        flip: whether to flip horizontally at random.
        pad_value: value of the added pixels, a scalar or one per channel. The
            references pad raw images with black before normalising; for
            standardised inputs that is ``-mean / std`` (what `randjax.fit` passes).

    Returns:
        The augmented batch, same shape and dtype as ``x``.

    Raises:
        ValueError: ``crop_padding`` not an int >= 0 or ``flip`` not a bool.
    """
    crop_padding = tree.check_int(crop_padding, "crop_padding", minimum=0)
    flip = tree.check_bool(flip, "flip")
    x = jnp.asarray(x)
    n, h, w, c = x.shape
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        p = crop_padding
        padded = jnp.broadcast_to(jnp.asarray(pad_value, x.dtype), (n, h + 2 * p, w + 2 * p, c))
        padded = padded.at[:, p:p + h, p:p + w, :].set(x)
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)
        crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
        x = jax.vmap(crop)(padded, offsets)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        x = jnp.where(mirror[:, None, None, None], x[:, :, ::-1, :], x)
    return x
