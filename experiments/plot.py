"""Learning curves of one or more runs, from their ``metrics.jsonl``.

    python -m experiments.plot --workdirs=runs/a,runs/b --out=curves.png

Left: mean training loss per epoch (log scale); right: test accuracy
(solid) and validation accuracy (dashed, where the run has a validation
split). Each run is labelled by its directory name.

Runs recorded with `randjax.analysis.dynamics_hook` also get
``--dynamics_out`` (default ``<out>_dynamics.png``): per layer, the frame
potential, the kernel norm, the distance from initialisation and the
ranking distance per epoch, and the sorted weight profile of the first and
last epoch (`plot_dynamics`).
"""

from __future__ import annotations

import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from absl import app, flags

from randjax.train import read_metrics

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories to plot.")
_OUT = flags.DEFINE_string("out", "curves.png", "Output PNG.")
_TITLE = flags.DEFINE_string("title", None, "Figure title.")
_DYNAMICS_OUT = flags.DEFINE_string(
    "dynamics_out", None, "The training-dynamics figure of the first run that recorded "
    "them (default: <out>_dynamics.png).")

#: The per-epoch scalars of `randjax.analysis.dynamics_hook`, as drawn.
DYNAMICS = {"frame_potential": "frame potential", "norm": "||W||_F",
            "distance_from_init": "||W - W0||_F", "ranking_distance": "ranking distance (mean)"}


def save_figure(fig, out: str | pathlib.Path, title: str | None = None):
    """Titles (if ``title``), lays out and writes ``fig`` to ``out``, then closes it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_runs(runs: dict[str, list[dict]], out: str | pathlib.Path, title: str | None = None):
    """Draws loss and accuracy curves of ``{label: records}`` into ``out``."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, records in runs.items():
        epochs = [r["epoch"] for r in records]
        (line,) = ax_loss.plot(epochs, [r["train_loss"] for r in records], label=label)
        ax_acc.plot(epochs, [r["test_accuracy"] for r in records], color=line.get_color(),
                    label=f"{label} (test)")
        if "val_accuracy" in records[0]:
            ax_acc.plot(epochs, [r["val_accuracy"] for r in records], "--",
                        color=line.get_color(), label=f"{label} (val)")
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out, title)


def plot_dynamics(records: list[dict], out: str | pathlib.Path, title: str | None = None):
    """Draws a run's `randjax.analysis.dynamics_hook` records into ``out``.

    Raises:
        ValueError: no record holds ``"dynamics"``.
    """
    records = [r for r in records if "dynamics" in r]
    if not records:
        raise ValueError("these records hold no 'dynamics' (record them with "
                         "randjax.analysis.dynamics_hook as fit's epoch_hook)")
    layers = list(records[0]["dynamics"])
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, len(DYNAMICS) + 1, figsize=(4 * (len(DYNAMICS) + 1), 3.6))
    for ax, (key, label) in zip(axes, DYNAMICS.items()):
        for layer in layers:
            values = [r["dynamics"][layer][key] for r in records]
            values = [v[0] if isinstance(v, list) else v for v in values]
            ax.plot(epochs, values, label=layer)
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for layer in layers:
        first, last = (r["dynamics"][layer]["profile"] for r in (records[0], records[-1]))
        ranks = np.linspace(0, 1, len(first))
        (line,) = ax.plot(ranks, first, "--", lw=1)
        ax.plot(ranks, last, color=line.get_color(), label=layer)
    ax.set(xlabel="rank (quantile)", ylabel=f"weight (dashed: epoch {epochs[0]}, "
           f"solid: {epochs[-1]})")
    ax.grid(alpha=0.3)
    save_figure(fig, out, title)


def main(argv):
    del argv
    if not _WORKDIRS.value:
        raise app.UsageError("--workdirs is required")
    runs = {pathlib.Path(w).name: read_metrics(w) for w in _WORKDIRS.value}
    plot_runs(runs, _OUT.value, _TITLE.value)
    print(f"wrote {_OUT.value}")
    recorded = [(name, r) for name, r in runs.items() if any("dynamics" in x for x in r)]
    if recorded:
        out = _DYNAMICS_OUT.value or str(pathlib.Path(_OUT.value).with_suffix("")) + "_dynamics.png"
        plot_dynamics(recorded[0][1], out, _TITLE.value or recorded[0][0])
        print(f"wrote {out}")
    elif _DYNAMICS_OUT.value:
        raise app.UsageError("--dynamics_out: no run recorded dynamics")


if __name__ == "__main__":
    app.run(main)
