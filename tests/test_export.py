"""randjax.export: the container, the codec registry, edge-popup's weight keys + bit masks."""

import json
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import randjax
from randjax import export
from randjax.methods.laperm import save_permuted
from tests.helpers import trained_scores


def lenet():
    return randjax.models.get("lenet300_100", use_bias=False)




@pytest.mark.parametrize("store_weights", [True, False])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_round_trip_gives_identical_logits(tmp_path, store_weights, scope):
    model = lenet()
    x = jax.random.normal(jax.random.key(1), (16, 784))
    params = model.init(jax.random.key(0), x)["params"]
    rp = randjax.edge_popup(0.5, scope=scope, weight_init="signed_constant",
                            store_weights=store_weights)
    key = jax.random.key(3)
    trainable, frozen = rp.init(key, params)
    trainable = trained_scores(trainable)
    info = export.save(tmp_path / "net", rp, trainable, frozen,
                       key=key if store_weights else None)
    assert info.path.endswith("net.npz")
    rebuilt = export.load(info.path)
    effective = jax.jit(rp.apply)(trainable, frozen)
    jax.tree.map(np.testing.assert_array_equal, rebuilt, effective)
    logits = lambda p: np.asarray(jax.jit(model.apply)({"params": p}, x))
    np.testing.assert_array_equal(logits(rebuilt), logits(effective))
    # 266,200 weights at one bit each (33,275 bytes) plus the header.
    assert info.float32_bytes == 4 * 266_200
    assert 33_275 < info.bytes < 36_000 and info.ratio > 29


def test_round_trip_with_biases_train_others_and_scaled_init(tmp_path):
    model = randjax.models.get("conv2", width=0.125, use_bias=True)
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
    params = model.init(jax.random.key(0), x)["params"]
    rp = randjax.edge_popup(0.2, weight_init="scaled_kaiming_normal", train_others=True,
                            rounding="reference", store_weights=False)
    trainable, frozen = rp.init(jax.random.key(5), params)
    trainable = trained_scores(trainable)  # the biases move too
    export.save(tmp_path / "conv.npz", rp, trainable, frozen)
    rebuilt = export.load(tmp_path / "conv.npz")
    np.testing.assert_array_equal(model.apply({"params": rebuilt}, x),
                                  model.apply({"params": rp.apply(trainable, frozen)}, x))
    np.testing.assert_array_equal(rebuilt["Dense_0"]["bias"], trainable["Dense_0"]["bias"])


def test_round_trip_plain_dict_with_lists_and_nnx(tmp_path):
    params = {"layers": [{"w": jnp.ones((6, 5))}, {"w": jnp.ones((5, 3))}],
              "scale": jnp.float32(2.0)}
    rp = randjax.edge_popup(0.4, weight_init="kaiming_uniform", store_weights=False)
    trainable, frozen = rp.init(jax.random.key(0), params)
    export.save(tmp_path / "d.npz", rp, trainable, frozen)
    rebuilt = export.load(tmp_path / "d.npz")
    assert isinstance(rebuilt["layers"], list) and len(rebuilt["layers"]) == 2
    jax.tree.map(np.testing.assert_array_equal, rebuilt, rp.apply(trainable, frozen))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1, self.fc2 = nnx.Linear(20, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc2(jax.nn.relu(self.fc1(x)))

    graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
    trainable, frozen = rp.init(jax.random.key(1), nnx.to_pure_dict(state))
    export.save(tmp_path / "nnx.npz", rp, trainable, frozen)
    run = lambda pure: (nnx.replace_by_pure_dict(state, pure),
                        nnx.merge(graphdef, state)(jnp.ones((2, 20))))[1]
    np.testing.assert_array_equal(run(export.load(tmp_path / "nnx.npz")),
                                  run(rp.apply(trainable, frozen)))


def test_export_after_fit_with_reparam_key(tmp_path):
    digits = randjax.data.load("digits")
    rp = randjax.edge_popup(0.5, weight_init="signed_constant")
    result = randjax.fit(lenet(), digits, optax.sgd(0.1, momentum=0.9), reparam=rp,
                         epochs=1, batch_size=64, seed=4, progress=False)
    state = result.state
    export.save(tmp_path / "fit.npz", rp, state.trainable, state.frozen,
                key=randjax.train.reparam_key(4))
    x = jnp.asarray(digits.test.x)
    logits = lambda p: np.asarray(lenet().apply({"params": p}, x))
    np.testing.assert_array_equal(logits(export.load(tmp_path / "fit.npz")),
                                  logits(rp.apply(state.trainable, state.frozen)))


def test_export_errors(tmp_path):
    params = {"w": jnp.ones((8, 4))}
    stored = randjax.edge_popup(0.5, weight_init="signed_constant")
    trainable, frozen = stored.init(jax.random.key(0), params)
    with pytest.raises(ValueError, match="pass key="):
        export.save(tmp_path / "a", stored, trainable, frozen)
    with pytest.raises(ValueError, match=r"frozen weight \['w'\] is not the draw"):
        export.save(tmp_path / "a", stored, trainable, frozen, key=jax.random.key(1))
    # Weights kept from the model (no weight_init name): nothing to redraw them by.
    for rp in (randjax.edge_popup(0.5), randjax.supermask(weight_init="signed_constant"),
               randjax.dense()):
        t, f = rp.init(jax.random.key(0), params)
        with pytest.raises(ValueError, match="spec names a method with a registered codec"):
            export.save(tmp_path / "b", rp, t, f)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a randjax export"):
        export.load(tmp_path / "other.npz")


# ---------------------------------------------------------------------------
# A file changed after writing, or made by hand with a fresh digest: a
# ValueError that names the file and the field, array or leaf at fault,
# never a silently different network.


def _edge_popup_file(folder):
    # Leaves: 0 "b" (value_0), 1 "w" (key_1, mask_1: 15 bits in 2 bytes).
    params = {"b": jnp.zeros(3), "w": jnp.ones((5, 3))}
    rp = randjax.edge_popup(0.5, weight_init="signed_constant", store_weights=False)
    trainable, frozen = rp.init(jax.random.key(0), params)
    return export.save(folder / "edge_popup", rp, trained_scores(trainable), frozen).path


def _slot_machine_file(folder):
    # Leaves: 0 "b" (value_0), 1 "w" (key_1, index_1: 12 indices at 3 bits, 5 bytes).
    params = {"b": jnp.zeros(3), "w": jnp.ones((4, 3))}
    rp = randjax.slot_machine(5, store_weights=False)
    trainable, frozen = rp.init(jax.random.key(0), params)
    return export.save(folder / "slot_machine", rp, trained_scores(trainable), frozen).path


def _dense_0_kernel(path, leaf):
    return jax.tree_util.keystr(path) == "['Dense_0']['kernel']"


def _laperm_file(folder, lehmer):
    # Leaves: Dense_0 bias (0, value_0), kernel (1, 64 x 30: perm_1 or lehmer_1), the
    # others as value_2 .. value_5 (permuting one kernel compiles one shape: fast).
    model = randjax.models.get("lenet300_100", width=0.1,
                               kernel_init=randjax.init.get("xavier_uniform"))
    key = jax.random.key(0)
    params = model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    reversed_vectors = jax.tree.map(lambda w: w[::-1], params)
    return save_permuted(folder / f"laperm_{lehmer}", reversed_vectors, model, key,
                         (8, 8, 1), filter=_dense_0_kernel, lehmer=lehmer).path


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("written")
    return {"edge_popup": _edge_popup_file(folder),
            "slot_machine": _slot_machine_file(folder),
            "laperm": _laperm_file(folder, lehmer=False),
            "lehmer": _laperm_file(folder, lehmer=True)}


def _parts(path):
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    return json.loads(arrays.pop("spec").tobytes()), arrays


def _rewrite(path, header, arrays, redigest):
    """Writes the parts back with a fresh digest (`export.write`) or the header's old one."""
    if redigest:
        export.write(path, header["spec"], header["leaves"], arrays, 1)
    else:
        np.savez_compressed(path, spec=np.frombuffer(json.dumps(header).encode(), np.uint8),
                            **arrays)


def _leaf(i, **fields):
    return lambda h, a: h["leaves"][i].update(fields)


def _spec(**fields):
    return lambda h, a: h["spec"].update(fields)


def _array(**arrays):
    return lambda h, a: a.update({name: f(a) for name, f in arrays.items()})


def _set_bits(name, *bits):
    return _array(**{name: lambda a: a[name] | np.uint8(bits)})


def _duplicate_index(a):
    perm = a["perm_1"].copy()
    perm[1, 0] = perm[0, 0]
    return perm


def _bad_kernel_init(h, a):
    h["spec"]["options"]["kernel_init"] = {"initializer": "no_such_init"}


TAMPERING = [  # (id, file, tamper(header, arrays), the fault the message names)
    ("edge_shape", "edge_popup", _leaf(1, shape=[5, 4]),
     r"leaf 1 \['w'\]: array 'mask_1' must be uint8 of shape \(3,\), got uint8 of shape \(2,\)"),
    ("edge_dtype_name", "edge_popup", _leaf(1, dtype="float33"),
     r"header leaves\[1\] field 'dtype' must be the name of a NumPy number"),
    ("edge_dtype_int", "edge_popup", _leaf(1, dtype="int32"),
     r"leaf 1 \['w'\]: header field 'dtype' is 'int32', but an edge_popup weight is floating"),
    ("edge_value_dtype", "edge_popup", _leaf(0, dtype="float16"),
     r"leaf 0 \['b'\]: array 'value_0' is float32 of shape \(3,\), the header's fields"),
    ("edge_value_shape", "edge_popup", _leaf(0, shape=[4]),
     r"array 'value_0' is float32 of shape \(3,\), .* say float32 of shape \(4,\)"),
    ("edge_path_duplicate", "edge_popup", _leaf(1, path=[["dict", "b"]]),
     r"header leaves\[1\] field 'path': \['b'\] is also that of leaves\[0\]"),
    ("edge_path_malformed", "edge_popup", _leaf(1, path=[["attr", "w"]]),
     r"header leaves\[1\] field 'path' must be a list of \['dict', str\]"),
    ("edge_path_nested", "edge_popup", _leaf(1, path=[["dict", "b"], ["dict", "w"]]),
     r"header leaves\[0\] field 'path': \['b'\] is a leaf and also holds other leaves"),
    ("edge_path_mixed", "edge_popup", _leaf(1, path=[["list", 0]]),
     r"paths mix dict keys and list indices under \(the whole tree\)"),
    ("edge_path_list_gap", "edge_popup",
     lambda h, a: (_leaf(0, path=[["list", 0]])(h, a), _leaf(1, path=[["list", 2]])(h, a)),
     r"the list at \(the whole tree\) has indices \[0, 2\], not 0\.\.1"),
    ("edge_index_duplicate", "edge_popup", _leaf(1, index=0),
     r"header leaves\[1\] field 'index': 0 is also that of leaves\[0\]"),
    ("edge_index_type", "edge_popup", _leaf(1, index="1"),
     r"header leaves\[1\] field 'index' must be a non-negative int"),
    ("edge_masked_flag", "edge_popup", _leaf(1, masked=False),
     r"leaf 1 \['w'\]: header field 'masked' is False, but the leaf is stored in its codec"),
    ("edge_initializer", "edge_popup", _spec(weight_init="no_such_init"),
     r"spec field 'weight_init': unknown initializer 'no_such_init'"),
    ("edge_density", "edge_popup", _spec(density=2.0),
     r"spec field 'density': density must be in \(0, 1\]"),
    ("edge_method", "edge_popup", _spec(method="no_such_method"),
     r"spec field 'method': no export codec is registered for method 'no_such_method'"),
    ("edge_truncated_mask", "edge_popup", _array(mask_1=lambda a: a["mask_1"][:1]),
     r"leaf 1 \['w'\]: array 'mask_1' must be uint8 of shape \(2,\), got uint8 of shape \(1,\)"),
    ("edge_mask_padding", "edge_popup", _set_bits("mask_1", 0, 1),
     r"array 'mask_1' has bits set past its 15 entries"),
    ("edge_mask_dtype", "edge_popup", _array(mask_1=lambda a: a["mask_1"].astype(np.int64)),
     r"array 'mask_1' must be uint8 of shape \(2,\), got int64"),
    ("edge_key_shape", "edge_popup", _array(key_1=lambda a: a["key_1"][:1]),
     r"array 'key_1' must be uint32 of shape \(2,\), got uint32 of shape \(1,\)"),
    ("edge_key_missing", "edge_popup", lambda h, a: a.pop("key_1"),
     r"leaf 1 \['w'\]: array 'key_1' is missing"),
    ("edge_extra_array", "edge_popup", _array(junk=lambda a: np.zeros(2)),
     r"unexpected array 'junk': no header leaf owns it"),
    ("edge_extra_leaf_array", "edge_popup", _array(mask_0=lambda a: a["mask_1"]),
     r"leaf 0 \['b'\] has 'value_0' and also \['mask_0'\]"),
    ("edge_unowned_index", "edge_popup", _array(mask_7=lambda a: a["mask_1"]),
     r"unexpected array 'mask_7'"),
    ("slot_index_range", "slot_machine", _set_bits("index_1", 7, 0, 0, 0, 0),
     r"leaf 1 \['w'\]: array 'index_1' holds option index 7, but the spec's k=5"),
    ("slot_index_padding", "slot_machine", _set_bits("index_1", 0, 0, 0, 0, 128),
     r"array 'index_1' has bits set past its 12 indices"),
    ("slot_truncated_index", "slot_machine", _array(index_1=lambda a: a["index_1"][:4]),
     r"array 'index_1' must be uint8 of shape \(5,\), got uint8 of shape \(4,\)"),
    ("slot_shape", "slot_machine", _leaf(1, shape=[4, 4]),
     r"array 'index_1' must be uint8 of shape \(6,\)"),
    ("slot_k", "slot_machine", _spec(k=3),
     r"array 'index_1' must be uint8 of shape \(3,\)"),
    ("slot_k_type", "slot_machine", _spec(k="5"),
     r"spec field 'k': k must be a Python int"),
    ("slot_init", "slot_machine", _spec(init="no_such_init"),
     r"spec field 'init': init must be one of \('official', 'paper'\)"),
    ("slot_eval_selection", "slot_machine", _spec(eval_selection="sample"),
     r"spec field 'eval_selection': .*must be 'greedy', got 'sample'"),
    ("slot_spec_missing_field", "slot_machine", lambda h, a: h["spec"].pop("shared_options"),
     r"spec field 'shared_options' is missing"),
    ("laperm_duplicate_index", "laperm", _array(perm_1=_duplicate_index),
     r"leaf 1 \['Dense_0'\]\['kernel'\]: array 'perm_1': column 0 is not a permutation of "
     r"0\.\.63 \(\d+ appears 2 times\)"),
    ("laperm_index_range", "laperm", _array(perm_1=lambda a: a["perm_1"] | 128),
     r"array 'perm_1': column 0 is not a permutation of 0\.\.63 \(it holds 1\d\d\)"),
    ("laperm_perm_dtype", "laperm", _array(perm_1=lambda a: a["perm_1"].astype(np.uint16)),
     r"array 'perm_1' must be uint8 of shape \(64, 30\), got uint16"),
    ("laperm_truncated_perm", "laperm", _array(perm_1=lambda a: a["perm_1"][:-1]),
     r"array 'perm_1' must be uint8 of shape \(64, 30\), got uint8 of shape \(63, 30\)"),
    ("laperm_path", "laperm", _leaf(1, path=[["dict", "Dense_0"], ["dict", "kernel2"]]),
     r"header leaf 1 field 'path' is \['Dense_0'\]\['kernel2'\], the model's leaf 1 is "
     r"\['Dense_0'\]\['kernel'\]"),
    ("laperm_shape", "laperm", _leaf(1, shape=[30, 64]),
     r"header leaf 1 \['Dense_0'\]\['kernel'\]: fields 'dtype' and 'shape' say float32 "
     r"\[30, 64\], the model's initial leaf is float32 \[64, 30\]"),
    ("laperm_dtype", "laperm", _leaf(1, dtype="float16"),
     r"header leaf 1 \['Dense_0'\]\['kernel'\]: fields 'dtype' and 'shape' say float16"),
    ("laperm_permuted_flag", "laperm", _leaf(1, permuted=False),
     r"header field 'permuted' is False, but the leaf is stored in its codec"),
    ("laperm_initializer", "laperm", _bad_kernel_init,
     r"spec field 'options': unknown initializer 'no_such_init'"),
    ("laperm_model", "laperm", _spec(model="no_such_model"),
     r"spec field 'model': model must be one of"),
    ("laperm_input_shape", "laperm", _spec(input_shape=[8, 0, 1]),
     r"spec field 'input_shape': input_shape entry must be a Python int >= 1"),
    ("laperm_init_key", "laperm", _array(init_key=lambda a: a["init_key"][:1]),
     r"array 'init_key' must be uint32 of shape \(2,\)"),
    ("laperm_init_key_missing", "laperm", lambda h, a: a.pop("init_key"),
     r"array 'init_key' is missing"),
    ("laperm_missing_leaf", "laperm", lambda h, a: (h["leaves"].pop(), a.pop("value_5")),
     r"header field 'leaves': indices \[0, 1, 2, 3, 4\], but the model has 6 leaves"),
    ("lehmer_range", "lehmer", _array(lehmer_1=lambda a: a["lehmer_1"] | 255),
     r"array 'lehmer_1': row 0 encodes a number >= 64!, not the Lehmer code"),
    ("lehmer_spec_flag", "lehmer", _spec(lehmer=False),
     r"unexpected array 'lehmer_1' \(the leaf stores \['perm_1'\]\)"),
]


@pytest.mark.parametrize("redigest", [False, True], ids=["old_digest", "fresh_digest"])
@pytest.mark.parametrize(("kind", "tamper", "fault"), [case[1:] for case in TAMPERING],
                         ids=[case[0] for case in TAMPERING])
def test_load_refuses_a_tampered_file_naming_the_field(tmp_path, written, kind, tamper,
                                                       fault, redigest):
    header, arrays = _parts(written[kind])
    tamper(header, arrays)
    path = tmp_path / "tampered.npz"
    _rewrite(path, header, arrays, redigest)
    with pytest.raises(ValueError) as caught:
        export.load(path)
    message = str(caught.value)
    # With the old digest the digest is at fault first; the message adds the fault found.
    prefix = f"{path}: digest mismatch: the file was modified" if not redigest else f"{path}: "
    assert message.startswith(prefix), message
    assert re.search(fault, message), message


def test_load_refuses_a_changed_value_by_its_digest_alone(tmp_path, written):
    # A flipped mask bit or a changed bias is a well-formed file: only the digest tells.
    for name, change in (("mask_1", lambda m: m ^ np.uint8(0b1000_0000)),
                         ("value_0", lambda v: v + 1)):
        header, arrays = _parts(written["edge_popup"])
        arrays[name] = change(arrays[name])
        path = tmp_path / f"{name}.npz"
        _rewrite(path, header, arrays, redigest=False)
        with pytest.raises(ValueError, match=re.escape(
                f"{path}: digest mismatch: the file was modified or damaged after writing "
                "(its header and arrays are otherwise well-formed)")):
            export.load(path)
        _rewrite(path, header, arrays, redigest=True)   # a valid, different network
        assert export.load(path)["w"].shape == (5, 3)


def test_load_refuses_old_formats_and_a_missing_digest(tmp_path, written):
    header, arrays = _parts(written["edge_popup"])
    path = tmp_path / "old.npz"
    _rewrite(path, {**header, "format": "randjax.export/1", "digest": None}, arrays, False)
    with pytest.raises(ValueError, match=re.escape(
            f"{path}: written in the format 'randjax.export/1', which has no digest")):
        export.load(path)
    _rewrite(path, {**header, "format": "randjax.export/9"}, arrays, False)
    with pytest.raises(ValueError, match=re.escape(
            f"{path}: header field 'format' is 'randjax.export/9', not 'randjax.export/2'")):
        export.load(path)
    _rewrite(path, {k: v for k, v in header.items() if k != "digest"}, arrays, False)
    with pytest.raises(ValueError, match=re.escape(
            f"{path}: header field 'digest' must be a SHA-256 hex string, got None")):
        export.load(path)


def test_load_says_why_a_file_is_not_an_export(tmp_path, written):
    with open(written["edge_popup"], "rb") as file:
        data = file.read()
    cases = {"empty.npz": (b"", "is empty (0 bytes), not a randjax export"),
             "half.npz": (data[:len(data) // 2], "is truncated or damaged: a zip file"),
             "text.npz": (b"hello", "is not a randjax export: it is not a zip (.npz) file")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name} {message}")):
            export.load(tmp_path / name)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'array.npy'} is not a randjax export: it is a .npy array")):
        export.load(tmp_path / "array.npy")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'other.npz'} is not a randjax export: a .npz file without a "
            "'spec' entry (it has ['x'])")):
        export.load(tmp_path / "other.npz")
    np.savez(tmp_path / "spec.npz", spec=np.frombuffer(b"\xff\xfe{", np.uint8))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'spec.npz'}: not a randjax export: its 'spec' entry is not UTF-8 "
            "JSON")):
        export.load(tmp_path / "spec.npz")
    # A damaged byte inside the compressed header: deflate or the zip's CRC refuses it.
    with zipfile.ZipFile(written["edge_popup"]) as archive:
        start = archive.getinfo("spec.npy").header_offset
    name_length, extra_length = np.frombuffer(data[start + 26:start + 30], "<u2")
    at = start + 30 + int(name_length) + int(extra_length) + 10
    (tmp_path / "damaged.npz").write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'damaged.npz'} is truncated or damaged: its array 'spec' cannot be "
            "read")):
        export.load(tmp_path / "damaged.npz")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.npz"))):
        export.load(tmp_path / "missing.npz")
