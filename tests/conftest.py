"""Test session setup: a persistent XLA compilation cache.

Many tests compile the same small train steps; caching the executables
(keyed by the HLO and the compiler flags, so never stale) cuts the suite's
time on 2 cores. Subprocesses inherit it through the environment.
"""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "randjax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
