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
import os
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from randjax import tree

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "Split",
    "augment",
    "load",
    "pad_to_chunks",
    "read_idx",
    "shuffle_batches",
    "write_idx",
]

#: Environment variable naming a directory that holds ``<name>/`` IDX folders.
DATA_DIR_ENV = "RANDJAX_DATA_DIR"
#: Directories installed by Debian data set packages, by data set name.
SYSTEM_DATA_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
#: Debian packages providing the directories above.
SYSTEM_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
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
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
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


def _load_idx_dir(paths: dict[str, str]) -> tuple[Split, Split, int | None]:
    """Reads the four IDX files into ([0, 1] float32 NHWC, int) train/test splits."""
    arrays = {key: read_idx(p) for key, p in paths.items()}
    splits = []
    for part in ("train", "test"):
        x, y = arrays["x_" + part], arrays["y_" + part]
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{paths['x_' + part]}, {paths['y_' + part]}: need images (N, H, W[, C]) and "
                f"labels (N,), got {x.shape} and {y.shape}"
            )
        splits.append(Split(_to_unit(x, paths["x_" + part]), y))
    return splits[0], splits[1], None


# -------------------------------------------------------------------------- tfds


def _load_tfds(name: str, data_dir: str | None) -> tuple[Split, Split, int | None] | str:
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
        splits.append(Split(_to_unit(x, f"tfds {name}"), y))
    try:
        num_classes = int(sources[0].dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        num_classes = None
    return splits[0], splits[1], num_classes


# ------------------------------------------------------------------------ digits


def _load_digits() -> tuple[Split, Split, int]:
    """scikit-learn's 8x8 digits with a fixed, seed-independent 20% test split."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = round(0.2 * len(y))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return Split(x[train], y[train]), Split(x[test], y[test]), 10


# ----------------------------------------------------------------------- helpers


def _to_unit(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 images to float32 in [0, 1], NHWC; float images are kept as they are."""
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype == np.uint8:
        x = x.astype(np.float32)
        x /= np.float32(255.0)
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"{source}: images must be uint8 or floating point, got {x.dtype}")


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


def _find_raw(name: str, data_dir: str | None) -> tuple[Split, Split, int | None]:
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


def _check_labels(name: str, splits: list[Split],
                  num_classes: int | None) -> tuple[list[Split], int]:
    """int32 labels, checked to lie in [0, num_classes); infers num_classes if None."""
    ys = [s.y for s in splits if len(s.y)]
    if not all(np.issubdtype(y.dtype, np.integer) for y in ys):
        raise ValueError(f"{name}: labels must be integers, got {[y.dtype for y in ys]}")
    lo, hi = min(int(y.min()) for y in ys), max(int(y.max()) for y in ys)
    if num_classes is None:
        num_classes = hi + 1
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name}: labels span [{lo}, {hi}], outside [0, {num_classes})")
    return [Split(s.x, s.y.astype(np.int32)) for s in splits], num_classes


def _channel_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64 accumulation) of NHWC images; std 0 -> 1."""
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    centered = x - mean.astype(np.float32)
    var = np.square(centered, out=centered).mean(axis=(0, 1, 2), dtype=np.float64)
    std = np.sqrt(var)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std without a second full-size temporary."""
    x = x - mean
    x /= std
    return x


def load(
    name: str,
    *,
    data_dir: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: str = "standardize",
) -> Dataset:
    """Loads an image classification data set into memory.

    Args:
        name: ``"digits"``, ``"fashion_mnist"``, ``"mnist"``, a directory of
            MNIST-layout IDX files, or the name of a prepared tfds data set.
        data_dir: directory searched first for IDX files (``data_dir/<name>``,
            then ``data_dir``) and used as the tfds data directory.
        val_fraction: fraction of the training split moved to validation, in
            ``[0, 1)``; ``0`` gives an empty validation split.
        seed: seed of the validation carve-out permutation.
        normalize: ``"standardize"`` (scale to [0, 1], then per-channel zero mean
            and unit std with training-split statistics) or ``"unit"`` ([0, 1]).

    Returns:
        A `Dataset` with float32 NHWC images and int32 labels.

    Raises:
        ValueError: on an invalid argument or malformed data.
        DatasetNotFoundError: when the data set is nowhere to be found; the
            message lists every place looked and how to obtain the data.
    """
    tree.check_choice(normalize, NORMALIZATIONS, "normalize")
    if tree.check_real(val_fraction, "val_fraction", low=0.0) >= 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    name = os.fspath(name)
    train, test, num_classes = _find_raw(name, data_dir)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValueError(f"{name}: train images {train.x.shape[1:]} != test images "
                         f"{test.x.shape[1:]}")
    train, val = _carve_validation(train, val_fraction, seed)
    (train, val, test), num_classes = _check_labels(name, [train, val, test], num_classes)
    channels = train.x.shape[-1]
    mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    if normalize == "standardize":
        mean, std = _channel_statistics(train.x)
        train, val, test = (Split(_standardize(s.x, mean, std), s.y) for s in (train, val, test))
    return Dataset(name, train, val, test, int(num_classes), tuple(train.x.shape[1:]), mean, std)


# ------------------------------------------------------------ device-side helpers


def shuffle_batches(key: jax.Array, num_examples: int,
                    batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A random permutation of ``range(num_examples)`` cut into batches of indices.

    Jittable with ``num_examples`` and ``batch_size`` static.

    Args:
        key: PRNG key.
        num_examples: number of examples (Python int).
        batch_size: batch size (Python int, >= 1).

    Returns:
        ``(full, rest)``: int32 ``full`` of shape
        ``(num_examples // batch_size, batch_size)`` and the remaining indices
        ``rest`` of shape ``(num_examples % batch_size,)``.
    """
    if num_examples < 0 or batch_size < 1:
        raise ValueError(f"need num_examples >= 0 and batch_size >= 1, got {num_examples}, "
                         f"{batch_size}")
    perm = jax.random.permutation(key, num_examples).astype(jnp.int32)
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
    """
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
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
