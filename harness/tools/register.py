"""Put a trained run's model in the MLflow model registry, with an alias.

    python -m harness register --run <run id> --name <registered model> [--alias champion]

The run's LoggedModel (log_model: true) becomes a new version of `name`; a run trained with
`log_model: false` first has its best.pt logged as its model (with its test/* metrics attached),
so any finished run can be registered. Aliases (`models:/<name>@champion`) replace the stages
MLflow deprecated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.build import model_name
from harness.tools.trained import source_spec, trained_model
from harness.tracking.mlflow import log_model_to_run, logged_model_id, register, run_metrics, run_status


@dataclass
class Registered:
    model_id: str
    version: str
    logged_now: bool  # the model was logged from best.pt by this call


def register_run(run_id: str, name: str, alias: str | None = None) -> Registered:
    """Register run `run_id`'s model as a new version of `name` (alias -> that version). Raises
    LookupError for a run that is missing, not FINISHED, or has neither a model nor best.pt."""
    try:
        status = run_status(run_id)
    except Exception as err:  # MlflowException: no such run in this store
        raise LookupError(f"run {run_id} is not in this store ({err})") from None
    if status != "FINISHED":
        raise LookupError(f"run {run_id} is {status}: only a FINISHED run has tested weights to register")
    model_id, logged_now = logged_model_id(run_id), False
    if model_id is None:
        spec = source_spec(run_id)
        model, _ = trained_model(run_id, spec)  # best.pt: the weights the run's test scored
        size = spec.data.image_size
        example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        step = int(run_metrics(run_id).get("best/epoch", 0))
        model_id, logged_now = log_model_to_run(run_id, model, example, model_name(spec), step), True
    return Registered(model_id, register(model_id, name, alias), logged_now)
