"""Metric writers: JSONL appends and resumes; TensorBoard event files hold the scalars."""

import json
import math
import struct
import sys

import optax
import pytest

import randjax
from randjax import writers
from randjax.train import read_metrics


def _crc32c(data):
    """CRC-32C (Castagnoli), bit by bit: event files are small."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data):
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(logdir):
    """Every event of the files under ``logdir``, from the TFRecord framing.

    A record is an 8-byte little-endian length, the masked CRC-32C of those
    8 bytes, the data (an ``Event`` protocol buffer) and the data's CRC.
    """
    from tensorboardX.proto import event_pb2
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            header = data[offset:offset + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
            body = data[offset + 12:offset + 12 + length]
            (body_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
            assert len(body) == length
            assert header_crc == _masked_crc(header) and body_crc == _masked_crc(body)
            events.append(event_pb2.Event.FromString(body))
            offset += 16 + length
    return events


def _scalars(logdir):
    """Every (tag, step, value) of the TensorBoard event files under ``logdir``."""
    return [(v.tag, event.step, v.simple_value)
            for event in _read_events(logdir) for v in event.summary.value]


def test_jsonl_appends_and_resumes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = writers.JsonlWriter(path)
    for epoch in (1, 2, 3):
        writer.write({"epoch": epoch, "step": 5 * epoch, "train_loss": 1.0 / epoch,
                      "note": [epoch, "x"]})
    writer.close()
    with path.open("a") as f:
        f.write('{"epoch": 4, "train_lo')   # a line cut by a kill
    writer = writers.JsonlWriter(path, resume_epoch=2)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]   # truncated on opening
    assert not path.with_name("metrics.jsonl.partial").exists()
    writer.write({"epoch": 3, "step": 15, "train_loss": float("inf"),
                  "curve": (float("nan"), -float("inf"), 2.0)})
    writer.close()
    assert read_metrics(tmp_path) == [
        {"epoch": 1, "step": 5, "train_loss": 1.0, "note": [1, "x"]},
        {"epoch": 2, "step": 10, "train_loss": 0.5, "note": [2, "x"]},
        {"epoch": 3, "step": 15, "train_loss": None, "curve": [None, None, 2.0]}]
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    writers.JsonlWriter(path, resume_epoch=0).close()   # 0: a fresh file
    assert path.read_text() == ""
    writers.JsonlWriter(tmp_path / "new.jsonl", resume_epoch=3).close()   # nothing to resume
    assert (tmp_path / "new.jsonl").read_text() == ""


def test_jsonl_syncs_every_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = writers.JsonlWriter(path)
    writer.write({"epoch": 1, "step": 1, "train_loss": 0.25})
    assert read_metrics(tmp_path) == [{"epoch": 1, "step": 1, "train_loss": 0.25}]
    writer.close()


def test_jsonl_resume_keeps_a_whole_last_line_and_refuses_a_damaged_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}')   # the last line whole, its newline missing
    writers.JsonlWriter(path, resume_epoch=2).close()
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON object"):
        writers.JsonlWriter(path, resume_epoch=2)
    assert path.read_text() == '{"epoch": 1}\n{"epo\n{"epoch": 2}\n'   # left as it was
    with pytest.raises(ValueError, match="resume_epoch must be None or an epoch >= 0"):
        writers.JsonlWriter(path, resume_epoch=-1)


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    writer = writers.TensorBoardWriter(tmp_path)
    for epoch in (1, 2, 3):
        writer.write({"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch,
                      "val_accuracy": 0.5 + epoch / 10, "test_accuracy": 0.25 * epoch,
                      "learning_rate": None, "epoch_seconds": 2, "eval_transform": "synced",
                      "curve": [1.0, 2.0], "diverged": epoch == 3})
    writer.close()
    scalars = _scalars(tmp_path)
    tags = ("train/loss", "val/accuracy", "test/accuracy", "epoch_seconds", "diverged")
    assert sorted((t, s) for t, s, _ in scalars) == sorted(
        (t, e) for e in (1, 2, 3) for t in tags)
    values = {(t, s): v for t, s, v in scalars}
    for epoch in (1, 2, 3):
        assert values["train/loss", epoch] == pytest.approx(1.0 / epoch)
        assert values["val/accuracy", epoch] == pytest.approx(0.5 + epoch / 10)
        assert values["test/accuracy", epoch] == pytest.approx(0.25 * epoch)
        assert values["epoch_seconds", epoch] == 2.0
        assert values["diverged", epoch] == float(epoch == 3)


def test_tensorboard_writes_nonfinite_values_and_hides_later_epochs_on_resume(tmp_path):
    writer = writers.TensorBoardWriter(tmp_path)
    writer.write({"epoch": 1, "step": 1, "train_loss": float("nan")})
    writer.close()
    assert math.isnan(_scalars(tmp_path)[0][2])
    writers.TensorBoardWriter(tmp_path, resume_epoch=4).close()
    starts = [e.step for e in _read_events(tmp_path) if e.HasField("session_log")]
    assert starts == [5]   # TensorBoard drops older events from step 5 on


def test_multi_writer_fans_out_and_closes_all(tmp_path):
    class Recorder:
        def __init__(self, fail=False):
            self.records, self.flushed, self.closed, self.fail = [], 0, False, fail

        def write(self, record):
            self.records.append(dict(record))

        def flush(self):
            self.flushed += 1

        def close(self):
            self.closed = True
            if self.fail:
                raise OSError("disk full")

    first, second = Recorder(fail=True), Recorder()
    writer = writers.MultiWriter([first, second, writers.JsonlWriter(tmp_path / "metrics.jsonl")])
    writer.write({"epoch": 1, "step": 3, "train_loss": 0.5})
    writer.flush()
    assert first.records == second.records == read_metrics(tmp_path)
    assert first.flushed == second.flushed == 1
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert first.closed and second.closed and writer.writers[2]._file.closed


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
    accuracies = {s: v for t, s, v in _scalars(tmp_path) if t == "test/accuracy"}
    assert accuracies == pytest.approx({r["epoch"]: r["test_accuracy"] for r in records})
    with pytest.raises(ValueError, match="pass workdir"):
        randjax.fit(model, digits, optax.adam(1e-3), epochs=1, batch_size=64,
                    tensorboard=True)


def test_tensorboard_without_tensorboardx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'randjax\[tensorboard\]'"):
        writers.TensorBoardWriter(tmp_path)
