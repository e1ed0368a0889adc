"""Where a Conv-4 training step's time goes, layer by layer (JAX side).

`experiments.benchmark --conv_phases` prints these for the zoo's ``conv4``;
`experiments.pytorch_conv4` times the same layers and phases in PyTorch, so
the two step times can be compared part by part:

* the whole step: ``forward`` (the loss), ``backward`` (loss and gradients),
  ``step`` (gradients and the SGD-momentum update);
* every conv layer: ``forward``, ``input_grad`` (the gradient sent to the
  layer below; on CPU randjax's forward conv with the flipped kernel),
  ``input_grad_xla`` (XLA's own: the conv's VJP), ``kernel_grad`` (randjax's
  CPU kernel gradient: matmuls over groups of images, one per kernel row)
  and ``kernel_grad_xla`` (XLA's own convolution);
* every max-pool: forward and backward together (``pool``);
* every dense layer: ``forward``, ``input_grad``, ``kernel_grad``.

Each is one jitted program on random inputs, timed in turn with the others
(`experiments.timing.interleaved_medians`), in milliseconds. A layer's
program returns the sum of its result, as PyTorch's side does: returned
whole, every call would write a fresh full-size buffer (32 MB for the first
convs at batch 128), whose page faults cost this CPU more than the
convolution itself (136 ms against 48 ms for conv1's forward), while inside
the training step XLA reuses its buffers.

With ``--in_loop=N`` (`conv4_phase_ms`'s ``in_loop``) each phase is also
timed inside a `lax.fori_loop` of N calls (``<phase>_in_loop``, per call),
where `randjax.fit`'s epochs run their steps: XLA:CPU compiles some
convolutions far slower in a loop body than alone (its own input gradient),
and ``model``'s ``step_in_loop`` is what a training epoch pays per step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from experiments import timing
from randjax import models
from randjax.models import common

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv4_layers(batch: int) -> list[dict]:
    """Conv-4's layers on 32x32x3 inputs, in order: convs, pools, dense (no biases)."""
    convs = [(32, 3, 64), (32, 64, 64), "pool", (16, 64, 128), (16, 128, 128), "pool"]
    layers, size, channels = [], 32, 3
    for layer in convs:
        if layer == "pool":
            layers.append({"kind": "pool", "input": (batch, size, size, channels)})
            size //= 2
            continue
        size, c_in, c_out = layer
        layers.append({"kind": "conv", "input": (batch, size, size, c_in),
                       "kernel": (3, 3, c_in, c_out)})
        channels = c_out
    for d_in, d_out in ((size * size * channels, 256), (256, 256), (256, 10)):
        layers.append({"kind": "dense", "input": (batch, d_in), "kernel": (d_in, d_out)})
    return layers


def name_of(index: int, layer: dict) -> str:
    """``conv0``, ``pool2``, ``dense6``, ... (the layer's position in `conv4_layers`)."""
    return f"{layer['kind']}{index}"


def _conv(fast: bool):
    conv = common.conv_general_dilated if fast else lax.conv_general_dilated
    return lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS)


def _in_loop(f, iterations: int):
    """``f(*args) -> scalar`` called ``iterations`` times inside a `lax.fori_loop`,
    as a `lax.scan` epoch calls its step; the first argument is nudged by the
    running sum, so no call can be hoisted out of the loop."""
    def looped(first, *rest):
        body = lambda i, total: total + f(first + total * 1e-30, *rest)
        return lax.fori_loop(0, iterations, body, jnp.zeros((), first.dtype))
    return looped


def _layer_phases(layer: dict, key: jax.Array) -> dict:
    """``{phase: (f, args)}`` of one layer, ``f(*args)`` the sum of the phase's result."""
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, layer["input"])
    if layer["kind"] == "pool":
        dy = jax.random.normal(k2, jax.eval_shape(common.max_pool, x).shape)
        return {"pool": (lambda x, dy: jnp.sum(jax.vjp(common.max_pool, x)[1](dy)[0]), (x, dy))}
    w = jax.random.normal(k2, layer["kernel"]) * 0.05
    convs = {"": _conv(True)} if layer["kind"] == "conv" else {"": jnp.matmul}
    if layer["kind"] == "conv":
        convs["_xla"] = _conv(False)
    dy = jax.random.normal(k3, jax.eval_shape(convs[""], x, w).shape)
    phases = {"forward": (lambda x, w, op=convs[""]: jnp.sum(op(x, w)), (x, w))}
    for suffix, op in convs.items():
        phases[f"input_grad{suffix}"] = (lambda dy, w, x, op=op: jnp.sum(
            jax.vjp(lambda x: op(x, w), x)[1](dy)[0]), (dy, w, x))
        phases[f"kernel_grad{suffix}"] = (lambda x, w, dy, op=op: jnp.sum(
            jax.vjp(lambda w: op(x, w), w)[1](dy)[0]), (x, w, dy))
    return phases


def model_programs(batch: int, key: jax.Array, in_loop: int = 0) -> dict:
    """``{phase: fn()}`` of the zoo's whole Conv-4 step on a random batch; with
    ``in_loop``, also ``step_in_loop``: that many steps in one `lax.fori_loop`."""
    model = models.get("conv4", num_classes=10)
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (batch, 32, 32, 3))
    y = jax.random.randint(ky, (batch,), 0, 10)
    params = model.init(kp, x[:1])["params"]
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(params)

    def loss(params):
        logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state):
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    forward, backward, update = jax.jit(loss), jax.jit(jax.value_and_grad(loss)), jax.jit(step)
    programs = {"forward": lambda: forward(params), "backward": lambda: backward(params),
                "step": lambda: update(params, opt_state)}
    if in_loop:
        steps = jax.jit(lambda state: lax.fori_loop(0, in_loop, lambda i, s: step(*s), state))
        programs["step_in_loop"] = lambda: steps((params, opt_state))
    return programs


def conv4_phase_ms(batch: int, repeats: int, in_loop: int = 0) -> dict:
    """Median milliseconds of every phase: ``{"model": {...}, "<layer>": {...}}``.

    With ``in_loop`` > 0, every phase but XLA's own kernel gradient (far too
    slow there) is also timed ``in_loop`` times inside one `lax.fori_loop`, as
    ``<phase>_in_loop``, per call.
    """
    key = jax.random.key(0)
    programs = {("model", phase): fn
                for phase, fn in model_programs(batch, key, in_loop).items()}
    per_call = {("model", "step_in_loop"): in_loop}
    for i, layer in enumerate(conv4_layers(batch)):
        for phase, (f, args) in _layer_phases(layer, jax.random.fold_in(key, i)).items():
            part = name_of(i, layer)
            programs[part, phase] = functools.partial(jax.jit(f), *args)
            if in_loop and phase != "kernel_grad_xla":
                programs[part, f"{phase}_in_loop"] = functools.partial(
                    jax.jit(_in_loop(f, in_loop)), *args)
                per_call[part, f"{phase}_in_loop"] = in_loop
    for fn in programs.values():   # compile
        jax.block_until_ready(fn())
    seconds = timing.interleaved_medians(programs, repeats)
    report = {}
    for (part, phase), value in seconds.items():
        report.setdefault(part, {})[phase] = 1e3 * value / per_call.get((part, phase), 1)
    return report
