"""Multi-process runs of the experiment CLIs on JAX's distributed runtime.

Every process of a multi-host TPU slice, a multi-node GPU job or a local
test runs the same command with its own ``--process_id``; `initialize`
connects them with `jax.distributed.initialize` before anything touches a
device, and `randjax.fit` then trains data-parallel over every device of
every process::

    # on each of N hosts (i = 0 .. N-1), host 0 reachable at 10.0.0.1:
    python -m experiments.train --config=... --workdir=/shared/runs/x \\
        --coordinator_address=10.0.0.1:1234 --num_processes=N --process_id=i

    # on a TPU pod slice or a SLURM / Open MPI job: JAX finds the cluster itself
    python -m experiments.train --config=... --workdir=gs://.../x --distributed

The flags default to the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. The workdir must be one
directory every process sees (a shared file system or a bucket): orbax
writes and restores checkpoints collectively. On CPUs the processes
exchange gradients through gloo (``jax_cpu_collectives_implementation``).
`experiments.local_cluster` starts N such processes on one machine.
"""

from __future__ import annotations

import os

import jax
from absl import flags

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
        "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def define_flags() -> None:
    """Defines the flags of a multi-process run (``--coordinator_address`` and the rest)."""
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0's coordinator, for a multi-process run "
                        "(default: $JAX_COORDINATOR_ADDRESS).")
    flags.DEFINE_integer("num_processes", None,
                         "Number of processes of a multi-process run (default: "
                         "$JAX_NUM_PROCESSES).")
    flags.DEFINE_integer("process_id", None,
                         "This process's index in [0, num_processes) (default: "
                         "$JAX_PROCESS_ID).")
    flags.DEFINE_bool("distributed", False,
                      "Call jax.distributed.initialize() and let JAX detect the cluster "
                      "(TPU pod slices, SLURM, Open MPI); the three flags above override "
                      "what it detects.")


def initialize_args(coordinator_address: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None, *, distributed: bool = False,
                    environ=os.environ) -> dict | None:
    """`jax.distributed.initialize`'s arguments, or None for a single-process run.

    Unset arguments are read from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.

    Raises:
        ValueError: an incomplete or inconsistent set: a process count below
            1, a process id outside ``[0, num_processes)``, or some but not
            all of the three without ``distributed`` (whose cluster detection
            fills the rest).
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    for name, variable in _ENV.items():
        if given[name] is None and environ.get(variable):
            value = environ[variable]
            try:
                given[name] = value if name == "coordinator_address" else int(value)
            except ValueError:
                raise ValueError(f"${variable} must be an integer, got {value!r}") from None
    args = {k: v for k, v in given.items() if v is not None}
    if not args and not distributed:
        return None
    count, index = args.get("num_processes"), args.get("process_id")
    if count is not None and count < 1:
        raise ValueError(f"--num_processes must be >= 1, got {count}")
    if index is not None and index < 0:
        raise ValueError(f"--process_id must be >= 0, got {index}")
    if count is not None and index is not None and index >= count:
        raise ValueError(f"--process_id={index} is outside [0, {count}) for "
                         f"--num_processes={count}: process ids run from 0 to "
                         f"num_processes - 1")
    missing = sorted(set(given) - set(args))
    if missing and not distributed:
        raise ValueError(
            "a multi-process run needs --coordinator_address, --num_processes and "
            f"--process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
            f"$JAX_PROCESS_ID); missing: {', '.join('--' + m for m in missing)}; or pass "
            "--distributed to let JAX detect the cluster")
    return args


def initialize(args: dict | None) -> None:
    """Connects this process to the others (`jax.distributed.initialize`); None: no-op.

    Must run before anything touches a device. CPU processes exchange
    collectives through gloo.
    """
    if args is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)


def initialize_from_flags() -> None:
    """`initialize` with the flags `define_flags` defined (call first in ``main``)."""
    values = flags.FLAGS
    initialize(initialize_args(values.coordinator_address, values.num_processes,
                               values.process_id, distributed=values.distributed))
