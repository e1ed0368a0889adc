"""Metric writers: JSONL appends and resumes; TensorBoard event files hold the scalars."""

import json
import struct
import sys

import optax
import pytest

import randjax
from randjax import writers
from randjax.train import read_metrics


def _events(logdir):
    """Every (tag, step, value) of the TensorBoard event files under ``logdir``."""
    from tensorboardX.proto import event_pb2
    found = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4   # length, its CRC, the record, its CRC
            found += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return found


def test_jsonl_appends_and_resumes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = writers.JsonlWriter(path)
    for epoch in (1, 2, 3):
        writer.write({"epoch": epoch, "train_loss": 1.0 / epoch, "note": [epoch, "x"]})
    writer.close()
    with path.open("a") as f:
        f.write('{"epoch": 4, "train_lo')   # a line cut by a kill
    writer = writers.JsonlWriter(path, resume_epoch=2)
    writer.write({"epoch": 3, "train_loss": float("inf")})
    writer.close()
    assert read_metrics(tmp_path) == [
        {"epoch": 1, "train_loss": 1.0, "note": [1, "x"]},
        {"epoch": 2, "train_loss": 0.5, "note": [2, "x"]},
        {"epoch": 3, "train_loss": None}]
    writers.JsonlWriter(path).close()   # no resume: a fresh file
    assert path.read_text() == ""


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    writer = writers.TensorBoardWriter(tmp_path)
    for epoch in (1, 2, 3):
        writer.write({"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch,
                      "val_accuracy": 0.5 + epoch / 10, "learning_rate": None,
                      "eval_transform": "synced", "flag": True})
    writer.close()
    events = _events(tmp_path)
    assert sorted((t, s) for t, s, _ in events) == sorted(
        [(t, e) for e in (1, 2, 3) for t in ("train/loss", "val/accuracy")])
    assert {(t, s): v for t, s, v in events}[("val/accuracy", 3)] == pytest.approx(0.8)


def test_fit_writes_tensorboard_and_appends_on_resume(tmp_path, digits):
    model = randjax.models.get("lenet300_100", width=0.25)
    run = lambda epochs: randjax.fit(model, digits, optax.adam(1e-3), epochs=epochs,
                                     batch_size=64, workdir=tmp_path, progress=False,
                                     tensorboard=True)
    run(2)
    resumed = run(3)
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records == json.loads(json.dumps(resumed.history))
    losses = {s: v for t, s, v in _events(tmp_path) if t == "test/accuracy"}
    assert losses == pytest.approx({r["epoch"]: r["test_accuracy"] for r in records})
    with pytest.raises(ValueError, match="pass workdir"):
        randjax.fit(model, digits, optax.adam(1e-3), epochs=1, batch_size=64,
                    tensorboard=True)


def test_tensorboard_without_tensorboardx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'randjax\[tensorboard\]'"):
        writers.TensorBoardWriter(tmp_path)
