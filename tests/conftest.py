"""Test session setup: a persistent XLA compilation cache, a decoded-data cache.

Many tests compile the same small train steps; caching the executables
(keyed by the HLO and the compiler flags, so never stale) cuts the suite's
time on 2 cores. Subprocesses inherit it through the environment.
"""

import os
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "randjax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Decompressed IDX copies (randjax.data.decoded_cache_dir) stay out of ~/.cache.
os.environ.setdefault("RANDJAX_DATA_CACHE",
                      os.path.join(tempfile.gettempdir(), "randjax-test-idx-cache"))


@pytest.fixture(scope="session")
def digits():
    """The embedded digits data set (default split), loaded once per session."""
    import randjax
    return randjax.data.load("digits")


def _run_module(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture
def run_module():
    """``run_module(module, *args)``: runs ``python -m``, asserts it succeeded,
    returns its stdout."""
    return _run_module
