"""Run an experiment CLI as N cooperating processes on this machine.

    python -m experiments.local_cluster --num_processes=2 --devices_per_process=4 -- \\
        experiments.train --config=experiments/configs/dense.py --workdir=runs/mp

starts ``python -m experiments.train ...`` N times with
``--coordinator_address=127.0.0.1:<free port> --num_processes=N
--process_id=i``, each process seeing ``--devices_per_process`` simulated CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count``), so that JAX's
multi-process runtime (`experiments.distributed`) is exercised without a
cluster. Process 0's output is printed; the others' lines are prefixed with
their id. If one process fails, ``--timeout`` passes or the launcher gets
SIGTERM or Ctrl-C, all are killed (SIGKILL); the exit status is the first
non-zero one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(module_args: list[str], num_processes: int, devices_per_process: int, *,
           timeout: float, port: int | None = None, env: dict | None = None) -> int:
    """Runs ``python -m <module_args>`` as ``num_processes`` processes; returns the status.

    Every process gets ``--coordinator_address``, ``--num_processes`` and
    ``--process_id``; they are killed together on the first failure, after
    ``timeout`` seconds (status 124) or on SIGTERM (status 143).
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(f"num_processes and devices_per_process must be >= 1, got "
                         f"{num_processes} and {devices_per_process}")
    address = f"127.0.0.1:{port or free_port()}"
    env = dict(os.environ if env is None else env)
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen(
        [sys.executable, "-m", *module_args, f"--coordinator_address={address}",
         f"--num_processes={num_processes}", f"--process_id={i}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True) for i in range(num_processes)]
    printers = [threading.Thread(target=_echo, args=(proc, i), daemon=True)
                for i, proc in enumerate(procs)]
    for printer in printers:
        printer.start()
    deadline, status = time.monotonic() + timeout, 0
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        while any(proc.poll() is None for proc in procs):
            failed = [proc.returncode for proc in procs if proc.returncode not in (None, 0)]
            if failed:
                status = failed[0]
                break
            if time.monotonic() > deadline:
                print(f"local_cluster: timed out after {timeout:.0f} s", file=sys.stderr)
                status = 124
                break
            time.sleep(0.05)
    except _Terminated:
        status = 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for printer in printers:
            printer.join(timeout=5)
    return status or next((p.returncode for p in procs if p.returncode), 0)


class _Terminated(Exception):
    pass


def _terminated(signum, frame):
    raise _Terminated


def _echo(proc: subprocess.Popen, index: int) -> None:
    for line in proc.stdout:
        sys.stdout.write(line if index == 0 else f"[process {index}] {line}")
        sys.stdout.flush()


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("name the module to run after --, e.g. -- experiments.train "
                             "--config=... --workdir=...")
    sys.exit(launch(argv[1:], FLAGS.num_processes, FLAGS.devices_per_process,
                    timeout=FLAGS.timeout, port=FLAGS.port))


if __name__ == "__main__":
    flags.DEFINE_integer("num_processes", 2, "Processes to start.")
    flags.DEFINE_integer("devices_per_process", 4, "Simulated CPU devices of each process.")
    flags.DEFINE_float("timeout", 1800, "Kill every process after this many seconds.")
    flags.DEFINE_integer("port", None, "Coordinator port (default: a free one).")
    app.run(main)
