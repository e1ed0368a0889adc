"""PyTorch's Conv-4 training step on this CPU: the reference for `experiments.benchmark`.

    pip install torch          # not a randjax dependency
    python -m experiments.pytorch_conv4 --threads=2 --batch=128 --steps=20
    python -m experiments.benchmark --model=conv4 --dataset=synthetic \\
        --input_shape=32,32,3 --num_examples=5000 --batch=128 --optimizer=sgd --conv_phases

The network is allenai/hidden-networks' ``Conv4`` (``models/frankle.py``), as
randjax's zoo builds it: 3x3 convs with padding 1 (64, 64, max-pool, 128, 128,
max-pool), then 256, 256 and 10 units as 1x1 convolutions over the flattened
features, no biases, ReLU, cross-entropy, SGD lr 0.1 with momentum 0.9, on a
random batch of 32x32x3 images. It prints the median over ``--steps`` (after
``--warmup``) of the phases `experiments.benchmark --conv_phases` times on
the JAX side, each phase run on its own and timed in turn with the others:
for the whole network ``forward`` (loss), ``backward`` (forward and
gradients), ``step`` (forward, gradients and the update); for every layer of
`experiments.conv_phases.conv4_layers` ``forward``, ``input_grad`` and
``kernel_grad`` (``torch.nn.grad``), and each max-pool's forward and
backward (``pool``); in milliseconds, as a table and JSON.
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments import conv_phases, timing

_THREADS = flags.DEFINE_integer("threads", 2, "torch.set_num_threads (this machine's cores).")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed repetitions of each phase.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed repetitions first.")


def conv4(torch):
    """hidden-networks' Conv4 for 32x32x3 inputs, no biases."""
    nn = torch.nn
    conv = lambda c_in, c_out: nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    dense = lambda c_in, c_out: nn.Conv2d(c_in, c_out, 1, bias=False)   # as the reference
    return nn.Sequential(
        conv(3, 64), nn.ReLU(), conv(64, 64), nn.ReLU(), nn.MaxPool2d(2),
        conv(64, 128), nn.ReLU(), conv(128, 128), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Unflatten(1, (128 * 8 * 8, 1, 1)),
        dense(128 * 8 * 8, 256), nn.ReLU(), dense(256, 256), nn.ReLU(), dense(256, 10),
        nn.Flatten())


def layer_programs(torch, layer: dict) -> dict:
    """``{phase: fn()}`` of one layer of `experiments.conv_phases.conv4_layers`, NCHW."""
    F = torch.nn.functional
    grad = torch.nn.grad
    shape = layer["input"]
    if layer["kind"] == "pool":
        x = torch.randn(shape[0], shape[3], shape[1], shape[2], requires_grad=True)
        dy = torch.randn(shape[0], shape[3], shape[1] // 2, shape[2] // 2)
        return {"pool": lambda: torch.autograd.grad(F.max_pool2d(x, 2), x, dy)[0].sum()}
    if layer["kind"] == "conv":
        h, w_, c_in, c_out = layer["kernel"]
        x = torch.randn(shape[0], c_in, shape[1], shape[2])
        padding = 1
    else:   # dense, as the reference's 1x1 convolution
        (c_in, c_out), h, w_ = layer["kernel"], 1, 1
        x = torch.randn(shape[0], c_in, 1, 1)
        padding = 0
    w = torch.randn(c_out, c_in, h, w_) * 0.05
    dy = torch.randn(x.shape[0], c_out, x.shape[2], x.shape[3])
    # Each returns the sum of its result, as the JAX side (experiments.conv_phases).
    return {"forward": lambda: F.conv2d(x, w, padding=padding).sum(),
            "input_grad": lambda: grad.conv2d_input(x.shape, w, dy, padding=padding).sum(),
            "kernel_grad": lambda: grad.conv2d_weight(x, w.shape, dy, padding=padding).sum()}


def returning_none(fn):
    """``fn`` without its result: torch's CPU ops return when they are done, and
    `jax.block_until_ready` has nothing to wait for."""
    def call():
        fn()
    return call


def main(argv):
    del argv
    try:
        import torch  # noqa: PLC0415 (optional: only this comparison needs it)
    except ImportError:
        raise app.UsageError("this comparison needs PyTorch: pip install torch") from None
    torch.set_num_threads(_THREADS.value)
    torch.manual_seed(0)
    model = conv4(torch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(_BATCH.value, 3, 32, 32)
    y = torch.randint(0, 10, (_BATCH.value,))
    loss_of = lambda: torch.nn.functional.cross_entropy(model(x), y)

    def forward():
        with torch.no_grad():
            loss_of()

    def backward():
        model.zero_grad(set_to_none=True)
        loss_of().backward()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of().backward()
        optimizer.step()

    programs = {("model", name): fn for name, fn in
                (("forward", forward), ("backward", backward), ("step", step))}
    for i, layer in enumerate(conv_phases.conv4_layers(_BATCH.value)):
        for phase, fn in layer_programs(torch, layer).items():
            programs[conv_phases.name_of(i, layer), phase] = fn
    for _ in range(_WARMUP.value):
        for fn in programs.values():
            fn()
    seconds = timing.interleaved_medians(
        {k: returning_none(fn) for k, fn in programs.items()}, _STEPS.value)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch": _BATCH.value}
    for (part, phase), value in seconds.items():
        report.setdefault(part, {})[phase] = 1e3 * value
    for part, phases in report.items():
        if isinstance(phases, dict):
            print(part.ljust(8) + "  ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
