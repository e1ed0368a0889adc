"""The method registry: what each ``config.method`` builds for `randjax.fit`.

A method's config file (``experiments/configs/<method>.py``) registers it
once, at import, with its ``get_config`` (the method's reference setup) and
its ``build(config, optimizer) -> Method``::

    registry.register("edge_popup", get_config=get_config, build=build)

`build` finds the method a config names; a name that is not registered yet
is looked up as ``experiments/configs/<name>.py``, so a config made in
Python (or read from ``config.json``) builds without importing its file
first. Adding a method to the experiments is one config file.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections
import optax

import randjax


class Method(NamedTuple):
    """What a config's method gives `randjax.fit`.

    Attributes:
        reparam: how parameters are split and rebuilt (`randjax.dense()` for
            ordinary training).
        optimizer: the optimizer to train with: the config's optimizer, or a
            method's transformation around it (LaPerm, Lookahead).
        eval_transform: ``transform(state) -> state`` applied before
            evaluation (LaPerm's accuracy right after a sync), or None.
    """

    reparam: randjax.Reparam
    optimizer: optax.GradientTransformation
    eval_transform: Callable[[Any], Any] | None = None


class Entry(NamedTuple):
    """A registered method: its reference config and its builder."""

    get_config: Callable[[], ml_collections.ConfigDict]
    build: Callable[[ml_collections.ConfigDict, optax.GradientTransformation], Method]


_METHODS: dict[str, Entry] = {}


def register(name: str, *, get_config: Callable[[], ml_collections.ConfigDict],
             build: Callable[..., Method]) -> None:
    """Registers the method ``name`` (called once by its config file).

    The same file may register again (ml_collections loads a ``--config``
    file as a module of its own); another file may not take a name.

    Raises:
        ValueError: ``name`` is registered by another file.
    """
    previous = _METHODS.get(name)
    source = lambda fn: os.path.realpath(inspect.getfile(fn))
    if previous is not None and source(previous.build) != source(build):
        raise ValueError(f"method {name!r} is registered by {inspect.getfile(previous.build)} "
                         f"already; {inspect.getfile(build)} cannot take the name")
    _METHODS[name] = Entry(get_config, build)


def entry(name: str) -> Entry:
    """The registered method ``name``, importing ``experiments/configs/<name>.py`` if needed.

    Raises:
        ValueError: no such method (the message lists the registered ones).
    """
    if name not in _METHODS and isinstance(name, str) and name.isidentifier():
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(f"experiments.configs.{name}")
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {names()}")
    return _METHODS[name]


def names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_METHODS)


def get_config(name: str) -> ml_collections.ConfigDict:
    """The reference config of the method ``name``."""
    return entry(name).get_config()


def build(config: ml_collections.ConfigDict,
          optimizer: optax.GradientTransformation) -> Method:
    """The `Method` of ``config.method``, around the config's ``optimizer``.

    Raises:
        ValueError: unknown method; ``config`` has fields that the method's
            reference config does not (a setting nothing would read, such as
            ``sync_period`` on an edge-popup config).
    """
    method = entry(config.method)
    unread = sorted(set(config) - set(method.get_config()))
    if unread:
        raise ValueError(f"config fields {unread} are not settings of method "
                         f"{config.method!r} (see its get_config); nothing would read them")
    return method.build(config, optimizer)
