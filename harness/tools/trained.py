"""A trained run brought back: its resolved spec (the run's spec.yaml) and its best weights, from
`best.pt` under the run's checkpoint folder, or else from the model it logged. Runs with
`log_model: false` (Optuna trials, many campaign cells) have only best.pt; a store copied without
its checkpoints has only logged models."""

from __future__ import annotations

import torch
import yaml

from harness import paths
from harness.build import build_model
from harness.config.load import ExperimentSpec
from harness.engine import checkpoint
from harness.tracking.mlflow import load_model, logged_model_uri, run_artifact_text, run_metrics


def source_spec(run_id: str) -> ExperimentSpec:
    """The spec the run trained with, validated again (its paths are already absolute)."""
    return ExperimentSpec.model_validate(yaml.safe_load(run_artifact_text(run_id, "spec.yaml")))


def trained_model(run_id: str, spec: ExperimentSpec) -> tuple[torch.nn.Module, str]:
    """(model on the CPU in eval mode, where its weights came from). Raises LookupError when the run
    has neither best.pt nor a logged model."""
    best = paths.CHECKPOINTS / run_id / checkpoint.BEST
    if best.is_file():
        # The encoder's pretrained weights are in best.pt: do not fetch them (or a file) again.
        bare = spec.model_copy(update={"model": spec.model.model_copy(update={"encoder_weights": "none"})})
        model = build_model(bare)
        state = torch.load(best, map_location="cpu", weights_only=True)["model"]
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state.items()})  # torch.compile's prefix
        return model.eval(), str(best)
    if uri := logged_model_uri(run_id):  # runs:/<id>/unet-w32, or runs:/<id>/model (runs before #42)
        return load_model(run_id), uri
    raise LookupError(f"run {run_id}: no {best} and no logged model; was it trained in another store or "
                      f"checkpoint folder (harness.paths.CHECKPOINTS)?")


def run_threshold(run_id: str, spec: ExperimentSpec) -> float:
    """The threshold the run's test was scored at: its spec's, or the one chosen on validation."""
    if spec.eval.threshold == "auto":
        return float(run_metrics(run_id)["eval/threshold"])
    return float(spec.eval.threshold)
