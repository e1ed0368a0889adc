"""Timing that is fair on a shared machine: interleaved medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import jax


def interleaved_medians(fns: Mapping[str, Callable[[], object]], repeats: int) -> dict:
    """Median seconds of each ``fn()``, timed in turn round by round.

    Interleaving spreads the machine's drift (other load, clock changes)
    over all contenders alike, so their ratios are fair. Each call's result
    is waited for (`jax.block_until_ready`; other objects pass through).
    """
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
