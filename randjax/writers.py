"""Where `randjax.fit` sends each epoch's metrics record.

A writer is anything with ``write(record)`` and ``close()`` (`MetricWriter`);
`fit` writes one record per epoch, on process 0 only. `JsonlWriter` (always
on with a ``workdir``: ``metrics.jsonl``) appends one JSON line per epoch;
`TensorBoardWriter` writes event files for ``tensorboard --logdir`` through
the light ``tensorboardX`` package (``pip install 'randjax[tensorboard]'``).

    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> writer = JsonlWriter(path)
    >>> writer.write({"epoch": 1, "train_loss": 0.5})
    >>> writer.write({"epoch": 2, "train_loss": float("nan")})
    >>> writer.close()
    >>> path.read_text().splitlines()
    ['{"epoch": 1, "train_loss": 0.5}', '{"epoch": 2, "train_loss": null}']
    >>> JsonlWriter(path, resume_epoch=1).close()   # a run resumed after epoch 1
    >>> path.read_text().splitlines()
    ['{"epoch": 1, "train_loss": 0.5}']
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Protocol


class MetricWriter(Protocol):
    """Receives `fit`'s per-epoch records (``epoch``, ``step`` and the metrics)."""

    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def finite_json(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class JsonlWriter:
    """Appends one JSON line per record to ``path``, synced to disk.

    ``resume_epoch``: the epoch a resumed run restarts after; the file keeps
    its records up to it (a record of a later epoch, or a line cut by a
    kill, is dropped; rewritten through a rename). None or 0 starts afresh.
    """

    def __init__(self, path: str | os.PathLike, *, resume_epoch: int | None = None):
        self.path = pathlib.Path(path)
        kept = []
        if resume_epoch and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:   # a line cut by a kill
                    continue
                if record.get("epoch", 0) <= resume_epoch:
                    kept.append(line + "\n")
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(kept))
        os.replace(partial, self.path)
        self._file = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(finite_json(dict(record)), allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def tensorboard_name(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``val_accuracy`` -> ``val/accuracy``; others unchanged."""
    split, _, metric = key.partition("_")
    return f"{split}/{metric}" if split in ("train", "val", "test") and metric else key


class TensorBoardWriter:
    """TensorBoard event files in ``logdir``: every numeric entry, at step ``epoch``.

    Names are grouped by split (`tensorboard_name`). ``resume_epoch``: the
    events of later epochs left by an interrupted run are hidden
    (tensorboardX's ``purge_step``), so a resumed curve has no doubles.

    Raises:
        ImportError: ``tensorboardX`` is not installed.
    """

    def __init__(self, logdir: str | os.PathLike, *, resume_epoch: int | None = None):
        try:
            import tensorboardX
        except ImportError as error:
            raise ImportError("TensorBoard event files need tensorboardX: pip install "
                              "'randjax[tensorboard]'") from error
        self._writer = tensorboardX.SummaryWriter(
            str(logdir), purge_step=resume_epoch + 1 if resume_epoch else None)

    def write(self, record: Mapping[str, Any]) -> None:
        for key, value in record.items():
            if key in ("epoch", "step") or isinstance(value, bool) or not isinstance(
                    value, (int, float)):
                continue
            self._writer.add_scalar(tensorboard_name(key), value,
                                    global_step=record["epoch"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
