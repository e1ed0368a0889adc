"""JAX's persistent compilation cache for the experiment programs.

With it a second run of the same config (or a resumed one, or the next round
of a pruning run) loads its XLA executables from disk instead of compiling
them: on this project's presets compilation is most of the time before the
first epoch. The cache is on by default in the experiment programs:

    python -m experiments.train --config=... --workdir=W                # ~/.cache/randjax/xla
    python -m experiments.train ... --compilation_cache_dir=/fast/disk  # elsewhere
    python -m experiments.train ... --nocompilation_cache               # off

The default directory is ``$RANDJAX_COMPILATION_CACHE``, else
``$XDG_CACHE_HOME/randjax/xla`` (``~/.cache/randjax/xla``). Entries are keyed
by the program, the JAX/XLA version and the device, so a stale entry is
never used; delete the directory to reclaim its space. Library users call
`use` (or set ``jax_compilation_cache_dir`` themselves).
"""

from __future__ import annotations

import os
import pathlib

import jax
from absl import flags

ENV = "RANDJAX_COMPILATION_CACHE"


def default_directory() -> str:
    """``$RANDJAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/randjax/xla``."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return str(pathlib.Path(base) / "randjax" / "xla")


def use(directory: str | os.PathLike, *, replace: bool = False) -> None:
    """Keeps XLA's executables in ``directory``.

    A cache configured already (``$JAX_COMPILATION_CACHE_DIR``, or
    ``jax_compilation_cache_dir`` set by the caller) is kept unless
    ``replace``. Every program is cached, however fast it compiled (JAX's
    default skips those under a second: most of a small model's). Call it
    before anything compiles.
    """
    if replace or jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """``--compilation_cache`` (default on) and ``--compilation_cache_dir``."""
    flags.DEFINE_bool("compilation_cache", True,
                      "Keep compiled XLA programs on disk, so that the next run of the "
                      "same config skips compilation (--nocompilation_cache: off, also "
                      "a cache that $JAX_COMPILATION_CACHE_DIR configures).",
                      flag_values=flag_values)
    flags.DEFINE_string("compilation_cache_dir", None,
                        f"The cache's directory (default: $JAX_COMPILATION_CACHE_DIR if set, "
                        f"else ${ENV}, else $XDG_CACHE_HOME/randjax/xla, i.e. "
                        "~/.cache/randjax/xla).", flag_values=flag_values)


def use_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> str | None:
    """The cache as the flags say; returns its directory, or None when it is off.

    An explicit ``--compilation_cache_dir`` wins over ``$JAX_COMPILATION_CACHE_DIR``.
    """
    values = flag_values
    if not values.compilation_cache:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    explicit = values.compilation_cache_dir
    use(explicit or default_directory(), replace=bool(explicit))
    return jax.config.jax_compilation_cache_dir
