"""What a user needs to trust a run: code version, environment, device. No env vars, no secrets."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

try:
    HARNESS_VERSION = metadata.version("seg-harness")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    HARNESS_VERSION = "0+unknown"


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """{'git.commit': sha or 'unknown', 'git.dirty': 'true'|'false'|'unknown'}."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"git.commit": sha, "git.dirty": str(bool(status.strip())).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def source_name(argv: list[str] | None = None) -> str | None:
    """The command this process runs, as a run's `mlflow.source.name` ('harness experiment
    experiments/unet.yaml train.epochs=3'; MLflow's own would be '__main__.py'), or None where the
    process is not `python -m harness` or the `harness` script (tests, notebooks: MLflow's stays)."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]) if argv else Path()
    if script.name == "harness" or script.parts[-2:] == ("harness", "__main__.py"):
        return shlex.join(["harness", *argv[1:]])[:1000]
    return None


def environment(device: torch.device) -> dict[str, str]:
    env = {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.torch": torch.__version__,
        "env.harness": HARNESS_VERSION,
        "env.cpu_threads": str(torch.get_num_threads()),
        "device": str(device),
    }
    if device.type == "cuda":
        env["device.name"] = torch.cuda.get_device_name(device)
        env["env.cuda"] = str(torch.version.cuda)
    for pkg in ("torchvision", "mlflow", "albumentations", "numpy"):
        try:
            env[f"env.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return env
