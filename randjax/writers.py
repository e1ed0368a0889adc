"""Where `randjax.fit` sends each epoch's metrics record.

A writer is anything with ``write(record)``, ``flush()`` and ``close()``
(`MetricWriter`, the shape of ``clu.metric_writers`` cut down to one record
per epoch). `fit` writes one record per epoch, on process 0 only:
`JsonlWriter` (always on with a ``workdir``: ``metrics.jsonl``) appends one
JSON line per epoch; `TensorBoardWriter` writes event files for
``tensorboard --logdir`` through the light ``tensorboardX`` package
(``pip install 'randjax[tensorboard]'``); `MultiWriter` sends every record to
several writers.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> writer = JsonlWriter(path)
    >>> writer.write({"epoch": 1, "step": 10, "train_loss": 0.5})
    >>> writer.write({"epoch": 2, "step": 20, "train_loss": float("nan")})
    >>> writer.close()
    >>> path.read_text().splitlines()
    ['{"epoch": 1, "step": 10, "train_loss": 0.5}', '{"epoch": 2, "step": 20, "train_loss": null}']
    >>> JsonlWriter(path, resume_epoch=1).close()   # a run resumed after epoch 1
    >>> path.read_text().splitlines()
    ['{"epoch": 1, "step": 10, "train_loss": 0.5}']
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

#: The prefixes `tensorboard_name` turns into a group: ``train_loss`` -> ``train/loss``.
SPLITS = ("train", "val", "test")


class MetricWriter(Protocol):
    """Receives `fit`'s per-epoch records.

    A record is a flat mapping holding ``"epoch"`` (1-based) and ``"step"``
    (the global step after the epoch) and the metrics: Python numbers,
    None where a value was not finite or is unknown, and occasionally other
    JSON values (strings, lists).
    """

    def write(self, record: Mapping[str, Any]) -> None:
        """Writes one epoch's record."""
        ...

    def flush(self) -> None:
        """Pushes what was written so far to its destination."""
        ...

    def close(self) -> None:
        """Flushes and releases the writer; no write may follow."""
        ...


def finite_json(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN).

    Walks dicts, lists and tuples (tuples become lists, as in JSON).

    >>> finite_json({"loss": float("inf"), "curve": (1.0, float("nan"))})
    {'loss': None, 'curve': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class JsonlWriter:
    """Appends one JSON line per record to ``path``, synced to disk.

    Every `write` flushes and ``fsync``s its line, so a killed run loses at
    most the line being written. Non-finite floats are written as ``null``
    (`finite_json`); the file is read back by `randjax.train.read_metrics`.

    Args:
        path: the ``.jsonl`` file.
        resume_epoch: the epoch a resumed run restarts after. The file keeps
            its records with ``epoch <= resume_epoch`` and drops the rest,
            and a trailing line cut by a kill; the kept lines are rewritten
            through a temporary file and a rename, so a kill during the
            rewrite leaves either file whole. None or 0 starts a fresh
            (empty) file.

    Raises:
        ValueError: ``resume_epoch`` is negative, or a line other than the
            last of the file to resume is not a JSON object.
    """

    def __init__(self, path: str | os.PathLike, *, resume_epoch: int | None = None):
        if resume_epoch is not None and (isinstance(resume_epoch, bool) or resume_epoch < 0):
            raise ValueError(f"resume_epoch must be None or an epoch >= 0, got {resume_epoch!r}")
        self.path = pathlib.Path(path)
        kept = self._kept_lines(resume_epoch) if resume_epoch and self.path.exists() else []
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w", encoding="utf-8") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def _kept_lines(self, resume_epoch: int) -> list[str]:
        lines = self.path.read_text(encoding="utf-8").split("\n")
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                if number == len(lines):   # no newline after it: a line cut by a kill
                    continue
                raise ValueError(f"{self.path}:{number} is not a JSON object: {line[:80]!r}")
            if record.get("epoch", 0) <= resume_epoch:
                kept.append(line + "\n")
        return kept

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(finite_json(record), allow_nan=False) + "\n")
        self.flush()

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def tensorboard_name(key: str) -> str:
    """The TensorBoard tag of a record's ``key``: the split prefix becomes a group.

    ``train_*``, ``val_*`` and ``test_*`` become ``train/*``, ``val/*`` and
    ``test/*`` (so TensorBoard shows one section per split); every other key
    (``learning_rate``, ``epoch_seconds``, ``wall_seconds``, ...) is kept.

    >>> [tensorboard_name(k) for k in ("train_loss", "val_accuracy", "test_accuracy",
    ...                                "learning_rate", "train")]
    ['train/loss', 'val/accuracy', 'test/accuracy', 'learning_rate', 'train']
    """
    split, _, metric = key.partition("_")
    return f"{split}/{metric}" if split in SPLITS and metric else key


class TensorBoardWriter:
    """TensorBoard event files in ``logdir``: every numeric entry, at step ``epoch``.

    Each int, float or bool of a record except ``epoch`` and ``step`` is
    written with ``add_scalar(tensorboard_name(key), value,
    global_step=record["epoch"])`` (bools as 0/1, NaN and infinities as
    they are); None, strings and lists are skipped. Records are flushed to
    the event file as they are written.

    Args:
        logdir: the directory of the event files (made if missing).
        resume_epoch: the epoch a resumed run restarts after; TensorBoard
            hides the events of later epochs left by the interrupted run
            (tensorboardX's ``purge_step``), so a resumed curve has no
            doubles. None or 0: nothing is hidden.

    Raises:
        ImportError: ``tensorboardX`` is not installed
            (``pip install 'randjax[tensorboard]'``).

    >>> import tempfile
    >>> writer = TensorBoardWriter(tempfile.mkdtemp())
    >>> writer.write({"epoch": 1, "step": 10, "train_loss": 0.5, "eval_transform": "x"})
    >>> writer.close()
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
            if key in ("epoch", "step") or not isinstance(value, numbers.Real):
                continue
            self._writer.add_scalar(tensorboard_name(key), float(value),
                                    global_step=record["epoch"])
        self.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiWriter:
    """Sends every record to each of ``writers``, in order.

    `close` closes every writer, even when one raises (the first error is
    raised after the rest are closed).

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> writer = MultiWriter([JsonlWriter(root / "a.jsonl"), JsonlWriter(root / "b.jsonl")])
    >>> writer.write({"epoch": 1, "step": 10, "train_loss": 0.5})
    >>> writer.close()
    >>> (root / "a.jsonl").read_text() == (root / "b.jsonl").read_text() != ""
    True
    """

    def __init__(self, writers: Iterable[MetricWriter]):
        self.writers = tuple(writers)

    def write(self, record: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write(record)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        error = None
        for writer in self.writers:
            try:
                writer.close()
            except Exception as e:   # close the others first
                error = error or e
        if error is not None:
            raise error
