"""Random draws that repeat, run as loops: one copy of their code, the same bits.

A network's initialisation computes every parameter tensor by the same few
operations: a key derived from the parameter's name, random bits, their
transform to the initial distribution, a scale. Jitted as written, XLA
generates code for each tensor's copy of them, and for a ResNet-56 loading
that executable from the compilation cache was most of
`randjax.train.init_state`'s time (``python -m experiments.benchmark
--init_times=all`` times it for every zoo model).

`loop_repeated_draws` traces a function once and cuts its operations into
*parts*: the operations needed by the same set of outputs (a kernel's
draw, needed by the kernel and by its sorted copy; the sort, needed by the
copy alone). Parts that draw random bits and are the same operations on
differently valued inputs and constants run as one `jax.lax.map` over
those values: one copy of the code per distinct draw. The operations and
the values they see are the same, so are the results, bit for bit. Every
other part runs once, as written: what the outputs share (the key they
derive from, a threshold over all kernels), and small repeated work (a
key's derivation), which XLA compiled faster unrolled than as a loop when
both were tried. The draws left outside loops (one per distinct shape) take
their random words from one Threefry hash (`_merged_draws`): JAX lowers
the hash's code once per shape otherwise, and these are the same words.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, Var, jaxprs_in_params
from jax.extend.random import threefry2x32_p


class _Program(NamedTuple):
    """A jaxpr's inputs, outputs and operations (nested draws inlined: `_inline_draws`)."""

    invars: list
    outvars: list
    eqns: list


class _Part(NamedTuple):
    """Operations needed by one set of outputs, in program order."""

    eqns: tuple[int, ...]
    inputs: tuple[Any, ...]          # variables from elsewhere, in first-use order
    constants: tuple[Literal, ...]   # in use order
    exports: tuple[Any, ...]         # its variables that others (or the outputs) read


def loop_repeated_draws(fn: Callable, *args) -> Callable:
    """``fn`` as a function whose repeated random draws run as loops.

    Args:
        fn: a traceable function.
        *args: example arguments; the result takes arguments of the same
            structure, shapes and dtypes.

    Returns:
        A function computing ``fn(*args)``'s outputs bit for bit, in which
        parts of the computation that draw random bits and repeat (the same
        operations on other keys, inputs or constants) run as one
        `jax.lax.map` per distinct part, and the other 32-bit draws from
        (partitionable) Threefry keys take their words from one hash. A
        program with effects (callbacks, prints) runs as written. Meant to
        be jitted.

    Raises:
        Whatever tracing ``fn`` raises (e.g. a concretization error).
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    effects = any(eqn.effects for eqn in closed.jaxpr.eqns)
    jaxpr, consts = (_Program(closed.jaxpr.invars, closed.jaxpr.outvars, closed.jaxpr.eqns),
                     dict(zip(closed.jaxpr.constvars, closed.consts)))
    if not effects:
        jaxpr = _inline_draws(jaxpr, consts)
    parts = _parts(jaxpr)
    groups: dict[tuple, list[_Part]] = {}
    for part in parts:
        groups.setdefault(_signature(jaxpr, part), []).append(part)
    # Only draws loop: a loop of a few scalar operations (a key's derivation)
    # takes XLA longer to compile than their copies do.
    looped = [g for g in groups.values() if len(g) > 1 and _draws(jaxpr, g[0])]
    units = looped + [[p] for g in groups.values() if not any(g is x for x in looped)
                      for p in g]

    def run(*call_args):
        env = dict(zip(jaxpr.invars, jax.tree.leaves(call_args)))
        env.update(consts)
        loops = [u for u in units if len(u) > 1]
        written = sorted(i for u in units if len(u) == 1 for i in u[0].eqns)
        while loops or written:
            ready = [u for u in loops if all(v in env for p in u for v in p.inputs)]
            for unit in ready:
                _loop(jaxpr, unit, env)
            loops = [u for u in loops if not any(u is r for r in ready)]
            waiting = _bind_ready(jaxpr, written, env, merge=not effects)
            if not ready and len(waiting) == len(written):
                # The parts of a loop feed each other: as written.
                for i in sorted(waiting + [i for u in loops for p in u for i in p.eqns]):
                    _bind(jaxpr.eqns[i], env, lambda atom: atom.val)
                break
            written = waiting
        outputs = [v.val if isinstance(v, Literal) else env[v] for v in jaxpr.outvars]
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return run


def _bind_ready(jaxpr: _Program, eqns: list[int], env: dict, merge: bool) -> list[int]:
    """Evaluates, in program order, the ``eqns`` whose inputs are in ``env``; returns the rest.

    With ``merge``, the draws among them (`_mergeable`) wait until the
    others are done, then take their words from one hash (`_merged_draws`).
    """
    waiting, draws = [], []
    for i in eqns:
        eqn = jaxpr.eqns[i]
        if any(not isinstance(a, Literal) and a not in env for a in eqn.invars):
            waiting.append(i)
        elif merge and _mergeable(eqn, env):
            draws.append(eqn)
        else:
            _bind(eqn, env, lambda atom: atom.val)
    if draws:
        _merged_draws(draws, env)
    return waiting


def _inline_draws(jaxpr: _Program, consts: dict) -> _Program:
    """``jaxpr`` with every nested jit that draws random bits inlined.

    `jax.random`'s samplers are jits; inlined, their draws are operations of
    the program itself, for `_parts` to compare and `_merged_draws` to merge
    (XLA inlines every call anyway). Each inlined copy gets fresh variables:
    one jaxpr may be called from several places. Its constants go to ``consts``.
    """
    eqns = []

    def inline(inner, rename, fresh):
        read = lambda a: a if isinstance(a, Literal) else rename.get(a, a)
        for eqn in inner.eqns:
            invars = [read(a) for a in eqn.invars]
            called = eqn.params.get("jaxpr") if eqn.primitive.name == "jit" else None
            if isinstance(called, ClosedJaxpr) and _draws_in(called.jaxpr.eqns):
                scope = dict(zip(called.jaxpr.invars, invars))
                for v, value in zip(called.jaxpr.constvars, called.consts):
                    scope[v] = Var(v.aval)
                    consts[scope[v]] = value
                inline(called.jaxpr, scope, fresh=True)
                rename.update((o, a if isinstance(a, Literal) else scope.get(a, a))
                              for o, a in zip(eqn.outvars, called.jaxpr.outvars))
                continue
            if fresh:
                for o in eqn.outvars:
                    rename[o] = Var(o.aval)
            eqns.append(eqn.replace(invars=invars, outvars=[read(o) for o in eqn.outvars]))

    rename: dict = {}
    inline(jaxpr, rename, fresh=False)
    outvars = [a if isinstance(a, Literal) else rename.get(a, a) for a in jaxpr.outvars]
    return _Program(jaxpr.invars, outvars, eqns)


def _mergeable(eqn, env: dict) -> bool:
    """Whether ``eqn`` draws 32-bit words from one partitionable Threefry key (`_merged_draws`)."""
    if eqn.primitive.name != "random_bits" or eqn.params["bit_width"] != 32:
        return False
    key = env[eqn.invars[0]]
    return (key.shape == () and math.prod(eqn.params["shape"]) < MERGED_WORDS
            and jax.random.key_impl(key) == "threefry2x32"
            and jax.config.jax_threefry_partitionable)


#: Most words one merged hash computes (int32 indexing; the words are held at once).
MERGED_WORDS = 1 << 28


def _merged_draws(eqns: list, env: dict) -> None:
    """Computes each ``random_bits`` of ``eqns`` (`_mergeable`) into ``env``, by one hash.

    Partitionable Threefry makes word ``i`` of a draw the hash of its key
    and ``i``, its flat index, whatever the shape (``random_bits``' own
    lowering). So the draws are slices of one hash over their keys, each
    repeated, and their indices, concatenated: the same words from one copy
    of the hash's code, which JAX would lower once per distinct shape.
    """
    batches, size = [[]], 0
    for eqn in eqns:
        n = math.prod(eqn.params["shape"])
        if batches[-1] and size + n > MERGED_WORDS:
            batches, size = [*batches, []], 0
        batches[-1].append(eqn)
        size += n
    for batch in batches:
        sizes = [math.prod(eqn.params["shape"]) for eqn in batch]
        keys = zip(*(_key_words(env[eqn.invars[0]]) for eqn in batch))
        words = [lax.concatenate([lax.broadcast_in_dim(w, (m,), ()) for w, m in zip(k, sizes)], 0)
                 for k in keys]
        index = lax.concatenate([lax.iota(np.uint32, m) for m in sizes], 0)
        high, low = threefry2x32_p.bind(*words, lax.full_like(index, 0), index)
        bits, start = lax.bitwise_xor(high, low), 0
        for eqn, m in zip(batch, sizes):
            env[eqn.outvars[0]] = lax.reshape(lax.slice(bits, (start,), (start + m,)),
                                              eqn.params["shape"])
            start += m


def _key_words(key) -> tuple:
    """A Threefry key's two uint32 words."""
    data = jax.random.key_data(key)
    return lax.index_in_dim(data, 0, keepdims=False), lax.index_in_dim(data, 1, keepdims=False)


def _parts(jaxpr: _Program) -> list[_Part]:
    """The live operations, cut by the set of outputs that need them.

    With effects anywhere, one part holds every operation (program order
    is kept, nothing repeats).
    """
    producer = {v: i for i, eqn in enumerate(jaxpr.eqns) for v in eqn.outvars}
    owners: dict[int, set[int]] = {}
    for j, v in enumerate(jaxpr.outvars):
        stack = [producer[v]] if not isinstance(v, Literal) and v in producer else []
        while stack:
            i = stack.pop()
            if j not in owners.setdefault(i, set()):
                owners[i].add(j)
                stack.extend(producer[a] for a in jaxpr.eqns[i].invars
                             if not isinstance(a, Literal) and a in producer)
    if any(eqn.effects for eqn in jaxpr.eqns):
        owners = {i: set() for i in range(len(jaxpr.eqns))}
    clusters: dict[frozenset, list[int]] = {}
    for i in sorted(owners):
        clusters.setdefault(frozenset(owners[i]), []).append(i)
    readers: dict[Any, set[frozenset]] = {}
    for key, eqns in clusters.items():
        for i in eqns:
            for a in jaxpr.eqns[i].invars:
                if not isinstance(a, Literal):
                    readers.setdefault(a, set()).add(key)
    outputs = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    parts = []
    for key, eqns in clusters.items():
        inside = {o for i in eqns for o in jaxpr.eqns[i].outvars}
        inputs, constants = [], []
        for i in eqns:
            for a in jaxpr.eqns[i].invars:
                if isinstance(a, Literal):
                    constants.append(a)
                elif a not in inside and a not in inputs:
                    inputs.append(a)
        exports = tuple(o for i in eqns for o in jaxpr.eqns[i].outvars
                        if o in outputs or readers.get(o, set()) - {key})
        parts.append(_Part(tuple(eqns), tuple(inputs), tuple(constants), exports))
    return parts


def _draws_in(eqns) -> bool:
    """Whether the operations draw random bits, themselves or in a nested program."""
    return any(eqn.primitive.name == "random_bits"
               or any(_draws_in(j.eqns) for j in jaxprs_in_params(eqn.params)) for eqn in eqns)


def _draws(jaxpr: _Program, part: _Part) -> bool:
    """Whether the part draws random bits, itself or in a nested program."""
    return _draws_in([jaxpr.eqns[i] for i in part.eqns])


def _aval(atom) -> tuple:
    return tuple(atom.aval.shape), str(atom.aval.dtype)


def _param(value):
    """A hashable stand-in for an equation parameter; by identity when not a plain value."""
    if isinstance(value, (ClosedJaxpr, Jaxpr)) or callable(value):
        return ("object", id(value))
    if isinstance(value, (tuple, list)):
        return tuple(_param(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def _signature(jaxpr: _Program, part: _Part) -> tuple:
    """The part's operations, their wiring, types and exports; not its values."""
    local: dict[Any, int] = {}
    steps = []
    for i in part.eqns:
        eqn = jaxpr.eqns[i]
        wiring = tuple(("literal", _aval(a)) if isinstance(a, Literal)
                       else ("local", local[a]) if a in local
                       else ("input", part.inputs.index(a), _aval(a))
                       for a in eqn.invars)
        for o in eqn.outvars:
            local[o] = len(local)
        steps.append((eqn.primitive, tuple((k, _param(v)) for k, v in sorted(eqn.params.items())),
                      wiring, tuple(_aval(o) for o in eqn.outvars)))
    return tuple(steps), tuple(local[o] for o in part.exports)


def _value(literal: Literal) -> np.ndarray:
    return np.asarray(literal.val, literal.aval.dtype)


def _same(literals: list[Literal]) -> bool:
    """Whether literals hold the same numbers of the same dtype."""
    values = [_value(a) for a in literals]
    return all(v.dtype == values[0].dtype and np.array_equal(v, values[0]) for v in values)


def _loop(jaxpr: _Program, group: list[_Part], env: dict) -> None:
    """Computes the exports of ``group`` (parts of one signature) by one `lax.map`, into ``env``.

    An input or constant that differs between the parts is mapped over,
    stacked; one they share is read as it is.
    """
    first = group[0]
    mapped_inputs = [k for k, v in enumerate(first.inputs)
                     if any(p.inputs[k] is not v for p in group)]
    constants = [[p.constants[k] for p in group] for k in range(len(first.constants))]
    mapped_constants = [k for k, literals in enumerate(constants) if not _same(literals)]
    xs = ([jax.numpy.stack([env[p.inputs[k]] for p in group]) for k in mapped_inputs],
          [np.stack([_value(a) for a in constants[k]]) for k in mapped_constants])

    def body(xs):
        given, literal = [env[v] for v in first.inputs], [a[0].val for a in constants]
        for k, value in zip(mapped_inputs, xs[0]):
            given[k] = value
        for k, value in zip(mapped_constants, xs[1]):
            literal[k] = value
        local, values = dict(zip(first.inputs, given)), iter(literal)
        for i in first.eqns:
            _bind(jaxpr.eqns[i], local, lambda atom: next(values))
        return [local[v] for v in first.exports]

    if mapped_inputs or mapped_constants:
        stacked = jax.lax.map(body, xs)
        for n, part in enumerate(group):
            env.update((v, out[n]) for v, out in zip(part.exports, stacked))
    else:   # the same operations on the same values
        out = body(xs)
        for part in group:
            env.update(zip(part.exports, out))


def _bind(eqn, env: dict, literal: Callable) -> None:
    """Evaluates ``eqn`` on ``env``'s values (as `jax.core.eval_jaxpr` does), into ``env``."""
    values = [literal(a) if isinstance(a, Literal) else env[a] for a in eqn.invars]
    out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]))
