"""Learning curves of one or more runs, from their ``metrics.jsonl``.

    python -m experiments.plot --workdirs=runs/a,runs/b --out=curves.png

Left: mean training loss per epoch (log scale); right: test accuracy
(solid) and validation accuracy (dashed, where the run has a validation
split). Each run is labelled by its directory name.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from absl import app, flags

from randjax.train import read_metrics

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories to plot.")
_OUT = flags.DEFINE_string("out", "curves.png", "Output PNG.")
_TITLE = flags.DEFINE_string("title", None, "Figure title.")


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    if not _WORKDIRS.value:
        raise app.UsageError("--workdirs is required")
    runs = {pathlib.Path(w).name: read_metrics(w) for w in _WORKDIRS.value}
    plot_runs(runs, _OUT.value, _TITLE.value)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
