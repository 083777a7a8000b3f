"""Worker processes, for studies and campaigns alike. Each launcher is a `launch(n)` that starts n
workers and returns True once they have stopped, or False when they run on their own (SLURM):

- local_workers: n processes on this machine, each the command that started the sweep with the
  hidden --worker-index=i (worker_command), its exit code reported when it is not 0;
- submitit_workers (campaigns): a SLURM job array on a cluster, or submitit's local executor (the
  same code path, as processes on this machine: what the tests use). The one module in harness that
  imports submitit, and only then. Each job is one campaign worker (harness.sweeps.campaign.run_campaign_worker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import paths

GENERIC = {"timeout_min", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "name"}


def parse_params(text: str) -> dict:
    """'partition=gpu,gpus_per_node=1,timeout_min=240' -> submitit's update_parameters keywords:
    its generic names as they are, anything else as slurm_<name>; integers as integers."""
    params = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"SLURM parameter {item!r}: expected key=value")
        key = key.strip() if key.strip() in GENERIC or key.startswith("slurm_") else f"slurm_{key.strip()}"
        params[key] = int(value) if value.strip().isdigit() else value.strip()
    return params


def _worker_job(spec_path: str, overrides: list[str], storage: str | None, index: int, cwd: str) -> int:
    """One job: the campaign worker `index`, run from the launcher's working directory."""
    os.chdir(cwd)
    from harness.config.sweeps import load_campaign_spec
    from harness.sweeps.campaign import run_campaign_worker

    spec, base = load_campaign_spec(spec_path, overrides)
    return len(run_campaign_worker(spec, base, storage, index))


def submitit_workers(spec_path: Path, overrides: list[str], storage: str | None, launcher: str, params: str):
    """launch(n) for run_campaign: n worker jobs as one submitit job array. `launcher`: 'slurm' (returns
    at once: the jobs run on their own) or 'submitit-local' (waits for them). Prints the job ids and
    where their logs are (mlruns/submitit/<job id>_<task>_log.out/.err)."""
    def launch(n: int) -> bool:
        import submitit

        folder = (paths.STORE / "submitit").resolve()
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="local" if launcher != "slurm" else None)
        executor.update_parameters(name=f"campaign-{spec_path.stem}", timeout_min=240, **parse_params(params))
        jobs = executor.map_array(_worker_job, [str(spec_path)] * n, [overrides] * n, [storage] * n, range(n),
                                  [os.getcwd()] * n)
        print(f"submitted {n} worker job(s): {', '.join(j.job_id for j in jobs)}; logs under {folder}/", flush=True)
        if launcher == "slurm":
            return False
        for job in jobs:
            job.result()  # raises if a worker failed
        return True
    return launch


def worker_command(command: str, spec_path: Path, overrides: list[str], storage: str | None) -> list[str]:
    """`python -m harness <command> <spec> <overrides> [--storage URL]`: what each local worker runs,
    with --workers=n --worker-index=i added."""
    return [sys.executable, "-m", "harness", command, str(spec_path), *overrides,
            *(["--storage", storage] if storage else [])]


def local_workers(command: str, spec_path: Path, overrides: list[str], storage: str | None):
    """launch(n): n processes of worker_command(...) on this machine; waits for them all and warns
    with every exit code when one is not 0."""
    cmd = worker_command(command, spec_path, overrides, storage)

    def launch(n: int) -> bool:
        procs = [subprocess.Popen([*cmd, f"--workers={n}", f"--worker-index={i}"]) for i in range(n)]

        def forward(signum, frame):  # a SIGTERM to the launcher (a batch system's) reaches its workers too
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            codes = [p.wait() for p in procs]
        finally:
            signal.signal(signal.SIGTERM, previous)
        if any(codes):
            print(f"warning: worker exit codes {codes}", file=sys.stderr)
        return True
    return launch
