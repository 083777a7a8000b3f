"""Campaign workers as submitit jobs: a SLURM job array on a cluster, or submitit's local executor
(the same code path, as processes on this machine: what the tests use). The one module in harness
that imports submitit. Each job is one campaign worker (harness.sweeps.campaign.run_worker)."""

from __future__ import annotations

import os
from pathlib import Path

import submitit

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
    from harness.sweeps.campaign import run_worker

    spec, base = load_campaign_spec(spec_path, overrides)
    return len(run_worker(spec, base, storage, index))


def submitit_workers(spec_path: Path, overrides: list[str], storage: str | None, launcher: str, params: str):
    """launch(n) for run_campaign: n worker jobs as one submitit job array. `launcher`: 'slurm' (returns
    at once: the jobs run on their own) or 'submitit-local' (waits for them). Prints the job ids and
    where their logs are (mlruns/submitit/<job id>_<task>_log.out/.err)."""
    def launch(n: int) -> bool:
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
