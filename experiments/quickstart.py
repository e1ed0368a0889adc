"""The quick start: dense baselines on the embedded digits data set, in seconds.

    python -m experiments.quickstart [--epochs=20] [--workdir=runs/quickstart]

Trains LeNet-300-100 and Conv4 with Adam on scikit-learn's 8x8 digits (no
download needed) and prints test accuracies and timings as a table.
"""

from __future__ import annotations

from absl import app, flags

from experiments import compile_cache, train
from experiments.configs import dense

_EPOCHS = flags.DEFINE_integer("epochs", 20, "Epochs per model.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Optional directory for run outputs.")
_MODELS = flags.DEFINE_list("models", ["lenet300_100", "conv4"], "Models to train.")


def run(models, epochs: int, workdir: str | None = None) -> list[dict]:
    """Trains each model on digits; returns one summary row per model."""
    rows = []
    for model in models:
        config = dense.get_config()
        config.update(model=model, dataset="digits", epochs=epochs, batch_size=64)
        result = train.train_and_evaluate(
            config, workdir and f"{workdir}/{model}", progress=False)
        summary = result.summary
        rows.append({"model": model, "epochs": summary["epochs"],
                     "train_loss": summary["final_train_loss"],
                     "best_val": summary["best_val_accuracy"],
                     "test_at_best_val": summary["test_accuracy_at_best_val"],
                     "test": summary["test_accuracy"],
                     "s/epoch": summary["median_epoch_seconds"]})
    return rows


def format_table(rows: list[dict]) -> str:
    header = list(rows[0])
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def main(argv):
    del argv
    compile_cache.use_from_flags()
    print(format_table(run(_MODELS.value, _EPOCHS.value, _WORKDIR.value)))


if __name__ == "__main__":
    compile_cache.define_flags()
    app.run(main)
