"""Run a plan's units as separate jobs: side by side on this machine (``--jobs N``) or on a SLURM cluster through
submitit (``--launcher submitit``).

Each job is the same ``sslbench run`` command restricted to one unit (``--unit K``: one variant × seed × dataset ×
encoder of the resolved plan, which every process resolves identically). Jobs share the checkpoint cache (the
checkpoint lock keeps two of them from training one checkpoint) and write their own records into the same ``--out``;
the launching process waits for all of them and then reads the records back, so the table, manifest and exit code
are the ones a single process would have given. Every plugin file the launching process loaded (``--plugin``,
``SSLBENCH_PLUGINS``) is passed to each job as ``--plugin ABSOLUTE_PATH``, so a job loads the same files wherever it
starts (every torchrun rank gets the same arguments).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from sslbench.errors import UsageError

__all__ = ["LAUNCHER_OPTIONS", "child_argv", "job_argv", "run_local", "run_submitit"]

#: Options of the launching process that its jobs must not see again (with the number of values each takes).
LAUNCHER_OPTIONS = {"--jobs": 1, "--launcher": 1, "--partition": 1, "--gpus-per-job": 1, "--timeout-min": 1,
                    "--submitit-cluster": 1, "--unit": 1}


def child_argv(argv: Sequence[str], unit: int) -> list[str]:
    """``argv`` (of ``sslbench``) without the launcher's options, restricted to one unit."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCHER_OPTIONS:
            skip = 0 if "=" in arg else LAUNCHER_OPTIONS[name]
            continue
        out.append(arg)
    return [*out, "--unit", str(unit), *([] if "--quiet" in out else ["--quiet"])]


def job_argv(argv: Sequence[str], unit: int) -> list[str]:
    """The job's ``sslbench`` arguments: :func:`child_argv` plus ``--plugin`` for every plugin file loaded here."""
    from sslbench.plugin_files import loaded_plugin_files

    plugins = [arg for loaded in loaded_plugin_files() for arg in ("--plugin", str(loaded.path))]
    return [*child_argv(argv, unit), *plugins]


def _command(argv: list[str], gpus: int) -> list[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "sslbench", *argv]
    return [sys.executable, "-m", "sslbench", *argv]


def run_local(argv: Sequence[str], units: list[int], jobs: int, log_dir: Path,
              say: Callable[[str], None]) -> dict[int, int]:
    """Run each unit's job as a subprocess, at most ``jobs`` at a time, each with its share of the CPU threads;
    returns each unit's exit code. Logs go to ``log_dir/unit-K.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "NUMBA_NUM_THREADS": str(threads)}
    waiting = list(units)
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    codes: dict[int, int] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            unit = waiting.pop(0)
            log = open(log_dir / f"unit-{unit}.log", "w")
            running[unit] = (subprocess.Popen(_command(job_argv(argv, unit), 1), stdout=log,
                                              stderr=subprocess.STDOUT, env=env), log)
            say(f"job for unit {unit} started (pid {running[unit][0].pid}, log {log.name})")
        for unit, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                codes[unit] = process.returncode
                del running[unit]
                say(f"job for unit {unit} ended with exit code {process.returncode}")
        time.sleep(0.2)
    return codes


def run_submitit(argv: Sequence[str], units: list[int], *, folder: Path, partition: str | None, gpus: int,
                 timeout_min: int, cluster: str | None, say: Callable[[str], None]) -> dict[int, int]:
    """Submit each unit's job through submitit (SLURM, or local processes where there is no SLURM or
    ``cluster="local"``), wait for all and return each unit's exit code."""
    try:
        import submitit
    except ImportError as exc:
        raise UsageError("--launcher submitit needs the submitit package: pip install 'sslbench[cluster]'") from exc
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": timeout_min, "gpus_per_node": gpus, "tasks_per_node": 1,
                              "name": "sslbench"}
    if partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    jobs = {}
    for unit in units:
        command = submitit.helpers.CommandFunction(_command(job_argv(argv, unit), gpus), cwd=os.getcwd(),
                                                   verbose=True)
        jobs[unit] = executor.submit(command)
        say(f"unit {unit} submitted as job {jobs[unit].job_id} ({executor.cluster})")
    codes = {}
    for unit, job in jobs.items():
        try:
            job.result()
            codes[unit] = 0
        except Exception as exc:  # a failed job is reported by its records and its log, not fatal to the others
            say(f"job {job.job_id} (unit {unit}) failed: {str(exc).strip().splitlines()[-1] if str(exc) else exc}")
            codes[unit] = 1
    return codes
