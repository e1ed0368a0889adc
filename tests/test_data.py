"""Tests for randjax.data: IDX I/O, loaders, normalisation, batching, augmentation."""

import gzip
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from randjax import data

IDX_NAMES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.DATA_CACHE_ENV, str(tmp_path / "decoded"))


def _write_idx_dataset(directory, n_train=30, n_test=12, shape=(28, 28), seed=0, gz=True):
    """Writes a small random MNIST-layout IDX data set; returns the raw arrays.

    Every one of the 10 classes has a training label (`data.load` refuses a
    class count inferred from labels that leave one without).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = (
        rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.uint8),
    )
    for name, array in zip(IDX_NAMES, arrays):
        data.write_idx(os.path.join(directory, name + (".gz" if gz else "")), array)
    return arrays


# ------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("array", [
    np.arange(2 * 5 * 7, dtype=np.uint8).reshape(2, 5, 7),
    np.array([3, 1, 4, 1, 5], dtype=np.uint8),
    np.array([[-(2**31), 2**31 - 1], [0, -7]], dtype=np.int32),
    np.array([1.5, -2.25, np.pi, 1e30], dtype=np.float32),
    np.array([-3, 100], dtype=np.int16),
    np.array([[1e-300]], dtype=np.float64),
], ids=["uint8-3d", "uint8-1d", "int32", "float32", "int16", "float64"])
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"a-idx{suffix}"
    data.write_idx(path, array)
    out = data.read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    raw = path.read_bytes()
    assert raw[:2] == (b"\x1f\x8b" if suffix else b"\0\0")  # gzip only with .gz


def test_idx_header_layout(tmp_path):
    path = tmp_path / "x"
    data.write_idx(path, np.zeros((2, 3), np.uint8))
    assert path.read_bytes() == b"\0\0\x08\x02" + b"\0\0\0\x02\0\0\0\x03" + bytes(6)
    data.write_idx(path, np.array([1], np.int32))
    assert path.read_bytes() == b"\0\0\x0c\x01\0\0\0\x01\0\0\0\x01"


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64, np.uint16])
def test_write_idx_rejects_unsupported_dtype(tmp_path, dtype):
    with pytest.raises(ValueError, match="unsupported dtype"):
        data.write_idx(tmp_path / "x", np.zeros(3, dtype))


def _valid_bytes():
    return b"\0\0\x08\x02\0\0\0\x02\0\0\0\x03" + bytes(range(6))


@pytest.mark.parametrize("payload, message", [
    (b"\x01\0\x08\x02" + _valid_bytes()[4:], "magic"),
    (b"\0\0\x07\x02" + _valid_bytes()[4:], "dtype code"),
    (_valid_bytes()[:-1], "truncated"),
    (_valid_bytes() + b"\0", "trailing"),
    (b"\0\0\x08\x02\0\0\0\x02", "header"),
    (b"", "magic"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_corrupt(tmp_path, payload, message, gz):
    path = tmp_path / ("bad-file-idx" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(ValueError, match=message) as info:
        data.read_idx(path)
    assert "bad-file-idx" in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "cut-idx.gz"
    data.write_idx(path, np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="gzip") as info:
        data.read_idx(path)
    assert "cut-idx.gz" in str(info.value)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cut-idx.gz"):
        data.read_idx(path)


# ---------------------------------------------------------------------- digits


def test_digits_shapes_and_dtypes():
    ds = data.load("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        assert split.x.shape[1:] == (8, 8, 1) and split.x.shape[0] == split.y.shape[0]
        assert split.y.min() >= 0 and split.y.max() < 10
    sizes = [len(ds.train.y), len(ds.val.y), len(ds.test.y)]
    assert sum(sizes) == 1797
    assert len(ds.test.y) == 359 and len(ds.val.y) == round(0.1 * (1797 - 359))
    assert ds.mean.shape == ds.std.shape == (1,)


def test_digits_standardized_statistics():
    ds = data.load("digits", val_fraction=0.2)
    np.testing.assert_allclose(ds.train.x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    unit = data.load("digits", val_fraction=0.2, normalize="unit")
    # Statistics come from the train split after carving, and all splits share them.
    np.testing.assert_allclose(ds.mean, unit.train.x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ds.std, unit.train.x.std(axis=(0, 1, 2)), rtol=1e-4)
    for std_split, unit_split in zip((ds.val, ds.test), (unit.val, unit.test)):
        np.testing.assert_allclose(std_split.x, (unit_split.x - ds.mean) / ds.std, atol=1e-5)
    assert unit.train.x.min() == 0.0 and unit.train.x.max() == 1.0
    np.testing.assert_array_equal(unit.mean, [0.0])
    np.testing.assert_array_equal(unit.std, [1.0])


def test_digits_val_fraction_zero():
    ds = data.load("digits", val_fraction=0.0)
    assert ds.val.x.shape == (0, 8, 8, 1) and ds.val.y.shape == (0,)
    assert ds.val.x.dtype == np.float32 and ds.val.y.dtype == np.int32
    assert len(ds.train.y) + len(ds.test.y) == 1797


def test_digits_determinism():
    a, b = data.load("digits", seed=3), data.load("digits", seed=3)
    c = data.load("digits", seed=4)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.val.y, b.val.y)
    assert not np.array_equal(a.val.x, c.val.x)
    # The test split is fixed whatever the seed; train + val cover the same examples.
    np.testing.assert_array_equal(a.test.y, c.test.y)
    unit_a = data.load("digits", seed=3, normalize="unit")
    unit_c = data.load("digits", seed=4, normalize="unit")
    np.testing.assert_array_equal(unit_a.test.x, unit_c.test.x)
    def rows(d):
        return {r.tobytes() for r in np.concatenate([d.train.x, d.val.x])}

    assert rows(unit_a) == rows(unit_c)


@pytest.mark.parametrize("kwargs, message", [
    (dict(normalize="none"), "normalize"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(val_fraction=-0.1), "val_fraction"),
    (dict(val_fraction="0.1"), "val_fraction"),
])
def test_load_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("digits", **kwargs)


# ------------------------------------------------------------------ IDX loader


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loader(tmp_path, gz):
    x_train, y_train, x_test, y_test = _write_idx_dataset(tmp_path / "toy", gz=gz)
    ds = data.load(str(tmp_path / "toy"), val_fraction=0.0, normalize="unit")
    assert ds.input_shape == (28, 28, 1)
    assert ds.num_classes == int(max(y_train.max(), y_test.max())) + 1
    np.testing.assert_allclose(ds.train.x[..., 0], x_train / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.test.x[..., 0], x_test / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.train.y, y_train)
    np.testing.assert_array_equal(ds.test.y, y_test)
    assert ds.train.y.dtype == np.int32


def test_gzipped_idx_is_decompressed_once(tmp_path, monkeypatch):
    arrays = _write_idx_dataset(tmp_path / "toy")
    first = data.load(str(tmp_path / "toy"), val_fraction=0.0, normalize="unit")
    copies = sorted(os.listdir(tmp_path / "decoded"))
    assert [c.rsplit("-", 1)[0] for c in copies] == sorted(IDX_NAMES)

    def no_decompress(_):
        raise AssertionError("decompressed although a decoded copy exists")

    with monkeypatch.context() as m:
        m.setattr(gzip, "decompress", no_decompress)
        again = data.load(str(tmp_path / "toy"), val_fraction=0.0, normalize="unit")
    np.testing.assert_array_equal(again.train.x, first.train.x)
    np.testing.assert_array_equal(again.test.y, first.test.y)
    # A changed file is decompressed anew, never answered from a stale copy.
    changed = _write_idx_dataset(tmp_path / "toy", seed=5)
    assert not np.array_equal(changed[0], arrays[0])
    fresh = data.load(str(tmp_path / "toy"), val_fraction=0.0, normalize="unit")
    np.testing.assert_allclose(fresh.train.x[..., 0], changed[0] / 255.0, rtol=1e-6)
    # A damaged copy is ignored and rewritten.
    for copy in os.listdir(tmp_path / "decoded"):
        (tmp_path / "decoded" / copy).write_bytes(b"\0\0\x08")
    again = data.load(str(tmp_path / "toy"), val_fraction=0.0, normalize="unit")
    np.testing.assert_array_equal(again.train.x, fresh.train.x)

    def readable(name):
        try:
            return data.read_idx(tmp_path / "decoded" / name).size > 0
        except ValueError:
            return False

    assert sum(map(readable, os.listdir(tmp_path / "decoded"))) == len(IDX_NAMES)


def test_decoded_cache_can_be_off_or_unwritable(tmp_path, monkeypatch):
    arrays = _write_idx_dataset(tmp_path / "toy")
    monkeypatch.setenv(data.DATA_CACHE_ENV, "off")
    assert data.decoded_cache_dir() is None
    ds = data.load(str(tmp_path / "toy"), val_fraction=0.0)
    assert not (tmp_path / "decoded").exists()
    (tmp_path / "blocked").write_text("a file where the cache directory would be")
    monkeypatch.setenv(data.DATA_CACHE_ENV, str(tmp_path / "blocked" / "idx"))
    again = data.load(str(tmp_path / "toy"), val_fraction=0.0)
    np.testing.assert_array_equal(again.train.x, ds.train.x)
    np.testing.assert_array_equal(again.train.y, arrays[1])
    monkeypatch.delenv(data.DATA_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.decoded_cache_dir() == str(tmp_path / "xdg" / "randjax" / "idx")


def test_idx_via_env_and_data_dir(tmp_path, monkeypatch):
    _, y_train, _, y_test = _write_idx_dataset(tmp_path / "env" / "toy_set", n_train=20, seed=1)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    ds = data.load("toy_set", val_fraction=0.25, seed=0)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (15, 5, 12)
    np.testing.assert_array_equal(ds.test.y, y_test)
    assert sorted(np.concatenate([ds.train.y, ds.val.y])) == sorted(y_train)
    # data_dir/<name> and data_dir itself come before the environment variable.
    _, _, _, y_test_dd = _write_idx_dataset(tmp_path / "dd" / "toy_set", n_test=7, seed=2)
    assert len(data.load("toy_set", data_dir=str(tmp_path / "dd")).test.y) == 7
    _write_idx_dataset(tmp_path / "flat", n_test=5, seed=3)
    assert len(data.load("toy_set", data_dir=str(tmp_path / "flat")).test.y) == 5


def test_fashion_mnist_via_env(tmp_path, monkeypatch):
    _write_idx_dataset(tmp_path / "fashion_mnist", n_train=10, n_test=4)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    ds = data.load("fashion_mnist", val_fraction=0)
    assert (len(ds.train.y), len(ds.test.y)) == (10, 4)


def test_idx_loader_rejects_mismatched_lengths(tmp_path):
    _write_idx_dataset(tmp_path, gz=False)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="t10k"):
        data.load(str(tmp_path))


def _with_labels(directory, train=None, test=None):
    """A 10-class IDX data set in ``directory`` with the given label arrays."""
    _write_idx_dataset(directory, gz=False)
    for name, labels in (("train-labels-idx1-ubyte", train), ("t10k-labels-idx1-ubyte", test)):
        if labels is not None:
            data.write_idx(os.path.join(directory, name), np.asarray(labels, np.uint8))
    return directory


def _stray_labels(n, index, value=250):
    labels = np.arange(n) % 10
    labels[index] = value
    return labels


def test_idx_stray_training_label_names_the_file_and_index(tmp_path):
    _with_labels(tmp_path, train=_stray_labels(30, 17))
    with pytest.raises(ValueError) as info:
        data.load(str(tmp_path))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "train-labels-idx1-ubyte") + ":")
    assert "label 250 at index 17 makes 251 classes" in message
    assert "hold no 10..249" in message and "num_classes=251" in message
    # Passing the count accepts it; a smaller one names the same label.
    assert data.load(str(tmp_path), num_classes=251).num_classes == 251
    with pytest.raises(ValueError, match=r"label 250 at index 17 is outside \[0, 10\)"):
        data.load(str(tmp_path), num_classes=10)


def test_idx_stray_test_label_names_the_test_file(tmp_path):
    _with_labels(tmp_path, test=_stray_labels(12, 5))
    with pytest.raises(ValueError, match="label 250 at index 5 makes 251 classes") as info:
        data.load(str(tmp_path))
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in str(info.value)


def test_idx_num_classes_smaller_than_the_labels(tmp_path):
    _with_labels(tmp_path, train=np.arange(30) % 10)
    with pytest.raises(ValueError) as info:
        data.load(str(tmp_path), num_classes=5)
    assert str(info.value) == (f"{tmp_path / 'train-labels-idx1-ubyte'}: label 5 at index 5 "
                               "is outside [0, 5) (num_classes=5 was given)")
    ds = data.load(str(tmp_path))  # the correct file still loads
    assert ds.num_classes == 10
    assert data.load(str(tmp_path), num_classes=12).num_classes == 12


def test_known_data_set_has_its_class_count(tmp_path, monkeypatch):
    directory = _with_labels(tmp_path / "fashion_mnist", train=_stray_labels(30, 3, value=10))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=r"label 10 at index 3 is outside \[0, 10\) "
                                         r"\(fashion_mnist has 10 classes") as info:
        data.load("fashion_mnist")
    assert str(directory / "train-labels-idx1-ubyte") in str(info.value)
    assert data.load("fashion_mnist", num_classes=11).num_classes == 11


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=0), "num_classes must be a Python int >= 1"),
    (dict(num_classes=10.0), "num_classes must be a Python int"),
    (dict(seed=-1), "seed must be a Python int >= 0"),
    (dict(seed="0"), "seed must be a Python int"),
    (dict(data_dir=3), "data_dir must be None or a directory path"),
])
def test_load_rejects_bad_arguments_before_reading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("digits", **kwargs)


def test_missing_data_dir_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    # The data set is in the environment's directory, but data_dir is wrong.
    _write_idx_dataset(tmp_path / "env" / "fashion_mnist", n_train=10, n_test=4)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    wrong = tmp_path / "typo"
    with pytest.raises(ValueError, match=f"data_dir '{wrong}' does not exist"):
        data.load("fashion_mnist", data_dir=str(wrong))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        data.load("fashion_mnist", data_dir=tmp_path / "file")
    # An existing data_dir without the data set still falls through to the others.
    (tmp_path / "empty").mkdir()
    assert len(data.load("fashion_mnist", data_dir=tmp_path / "empty").test.y) == 4


def test_fashion_mnist_system_dir():
    directory = data.SYSTEM_DATA_DIRS["fashion_mnist"]
    if not os.path.isdir(directory):
        pytest.skip(f"{directory} absent (apt-get install dataset-fashion-mnist)")
    ds = data.load("fashion_mnist", val_fraction=0.0)
    assert ds.train.x.shape == (60000, 28, 28, 1) and ds.test.x.shape == (10000, 28, 28, 1)
    assert ds.train.y.shape == (60000,) and ds.num_classes == 10
    assert ds.train.x.dtype == np.float32 and ds.test.y.dtype == np.int32
    np.testing.assert_allclose(ds.mean, [0.2860], atol=1e-3)  # the published statistics
    np.testing.assert_allclose(ds.std, [0.3530], atol=1e-3)


# ------------------------------------------------------------- missing data set


def test_missing_made_up_name(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("no_such_dataset_xyz")
    message = str(info.value)
    assert str(tmp_path / "no_such_dataset_xyz") in message
    assert "tfds" in message and "tfds build no_such_dataset_xyz" in message
    assert data.DATA_DIR_ENV in message
    assert isinstance(info.value, FileNotFoundError)
    assert len(message) < 3000  # tfds's list of every registered data set is not copied


def test_missing_fashion_mnist_lists_every_place(tmp_path, monkeypatch):
    hidden = str(tmp_path / "hidden-debian-dir")
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion_mnist", hidden)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion_mnist", data_dir=str(tfds_dir))
    message = str(info.value)
    for place in (tfds_dir / "fashion_mnist", tfds_dir, tmp_path / "env" / "fashion_mnist", hidden):
        assert f"{place} (" in message, place
    assert f"tfds data_dir {tfds_dir}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "tfds build fashion_mnist" in message


def test_missing_path_does_not_query_tfds(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="does not exist") as info:
        data.load(str(tmp_path / "nowhere"))
    assert "tfds data_dir" not in str(info.value)


# ------------------------------------------------------------------------- tfds


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(tmp_path, name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        ds = data.load(name, data_dir=str(tmp_path), val_fraction=0.25)
    assert ds.input_shape == shape and ds.num_classes == 10
    assert ds.train.x.shape == (15, *shape) and ds.val.x.shape == (5, *shape)
    assert ds.test.x.shape == (20, *shape)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        assert split.y.min() >= 0 and split.y.max() < 10
    np.testing.assert_allclose(ds.train.x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    assert ds.mean.shape == (shape[-1],)


# ------------------------------------------------------- batching/augmentation


@pytest.mark.parametrize("n, b", [(10, 3), (12, 4), (2, 5), (0, 1)])
def test_shuffle_batches(n, b):
    key = jax.random.key(0)
    fn = jax.jit(data.shuffle_batches, static_argnums=(1, 2))
    for f in (data.shuffle_batches, fn):
        full, rest = f(key, n, b)
        chex.assert_shape(full, (n // b, b))
        chex.assert_shape(rest, (n % b,))
        assert full.dtype == jnp.int32 and rest.dtype == jnp.int32
        np.testing.assert_array_equal(np.sort(np.concatenate([full.ravel(), rest])), np.arange(n))
    a, _ = data.shuffle_batches(jax.random.key(0), 100, 10)
    c, _ = data.shuffle_batches(jax.random.key(1), 100, 10)
    np.testing.assert_array_equal(a, data.shuffle_batches(jax.random.key(0), 100, 10)[0])
    assert not np.array_equal(a, c)


def test_shuffle_batches_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        data.shuffle_batches(jax.random.key(0), 10, 0)
    with pytest.raises(ValueError, match="batch_size must be a Python int >= 1, got 2.5"):
        data.shuffle_batches(jax.random.key(0), 10, 2.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop_padding=1.5), "crop_padding must be a Python int >= 0, got 1.5"),
    (dict(crop_padding=-1), "crop_padding must be a Python int >= 0, got -1"),
    (dict(flip="no"), "flip must be a Python bool, got 'no'"),
])
def test_augment_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.augment(jax.random.key(0), _images(), **kwargs)


def _images(n=16, h=6, w=5, c=2):
    return jax.random.normal(jax.random.key(42), (n, h, w, c))


def test_augment_identity_when_disabled():
    x = _images()
    np.testing.assert_array_equal(data.augment(jax.random.key(0), x), x)
    np.testing.assert_array_equal(jax.jit(data.augment)(jax.random.key(0), x), x)


@pytest.mark.parametrize("use_jit", [False, True])
def test_augment_flip(use_jit):
    x = np.asarray(_images(n=64))
    f = jax.jit(data.augment, static_argnames=("crop_padding", "flip")) if use_jit else data.augment
    out = np.asarray(f(jax.random.key(1), x, flip=True))
    assert out.shape == x.shape and out.dtype == x.dtype
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1, :], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 10 < mirrored.sum() < 54  # about half are flipped


@pytest.mark.parametrize("use_jit", [False, True])
def test_augment_crop(use_jit):
    p = 2
    x = np.asarray(_images(n=32))
    n, h, w, _ = x.shape
    f = jax.jit(data.augment, static_argnames=("crop_padding", "flip")) if use_jit else data.augment
    out = np.asarray(f(jax.random.key(2), x, crop_padding=p))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = []
    for i in range(n):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(out[i], padded[i, dy:dy + h, dx:dx + w])
        ]
        assert matches, f"image {i} is not a window of its padded input"
        offsets.append(matches[0])
    assert len(set(offsets)) > 3  # offsets are drawn independently per image


def test_augment_crop_and_flip_under_jit():
    x = _images()
    out = jax.jit(lambda k, x: data.augment(k, x, crop_padding=1, flip=True))(jax.random.key(3), x)
    chex.assert_shape(out, x.shape)
    chex.assert_tree_all_finite(out)


def test_augment_crop_pads_with_pad_value_per_channel():
    x = np.ones((64, 4, 4, 2), np.float32)
    pad_value = np.array([-3.0, 5.0], np.float32)
    out = np.asarray(data.augment(jax.random.key(4), x, crop_padding=2, pad_value=pad_value))
    for c in range(2):
        values = set(np.unique(out[..., c]).tolist())
        assert values == {1.0, float(pad_value[c])}, values


@pytest.mark.parametrize("shape", [(28, 28), (9, 7, 3), (5, 5)])
@pytest.mark.parametrize("normalize", ["standardize", "unit"])
def test_uint8_images_normalise_bitwise_as_float_arithmetic(tmp_path, shape, normalize):
    # load normalises bytes in cache-sized blocks and takes the statistics
    # from counts of the 256 pixel values (odd pixel counts included: 5 x 5);
    # the values must be exactly those of the float32 arithmetic x / 255, then
    # (x - mean) / std, with float64 sums.
    x_train, _, x_test, _ = _write_idx_dataset(tmp_path / "d", n_train=41, shape=shape)
    loaded = data.load(str(tmp_path / "d"), val_fraction=0.0, normalize=normalize)
    unit = lambda x: (x.reshape(len(x), *shape[:2], -1).astype(np.float32) / np.float32(255))
    train, test = unit(x_train), unit(x_test)
    mean = np.zeros(train.shape[-1], np.float32)
    std = np.ones(train.shape[-1], np.float32)
    if normalize == "standardize":
        mean64 = train.mean(axis=(0, 1, 2), dtype=np.float64)
        var = np.square(train - mean64.astype(np.float32)).mean(axis=(0, 1, 2),
                                                                dtype=np.float64)
        mean, std = mean64.astype(np.float32), np.sqrt(var).astype(np.float32)
    np.testing.assert_array_equal(loaded.mean, mean)
    np.testing.assert_array_equal(loaded.std, std)
    for split, expected in ((loaded.train, train), (loaded.test, test)):
        assert split.x.dtype == np.float32
        np.testing.assert_array_equal(split.x, (expected - mean) / std)
