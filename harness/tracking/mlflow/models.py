"""Models in MLflow 3: the best weights logged as a run's LoggedModel (torch.export), its test
metrics attached to it (so the model's page and `mlflow.search_logged_models` show them), the
registry (versions and aliases, not the deprecated stages), and loading a model back."""

from __future__ import annotations

import types

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from harness.tracking.mlflow.runs import default_tracking_uri, source_tags, store_client

# The run's metrics that describe its model, and the split (dataset input) each was measured on:
# the headline test scores, the validation scores of the weights' epoch, the parameter count.
LINKED = {"test/": "test", "val/": "val", "model/": None}
# MLflow attaches to a model every metric logged at the model's step, and system/* samples count
# their own steps (0, 1, 2, ...), so any epoch would collect unrelated samples: the model is logged
# at a step no metric uses, its epoch kept as a tag, and the metrics above are attached explicitly.
UNUSED_STEP = -1


def log_model(run_id: str, model: torch.nn.Module, example: torch.Tensor, name: str, step: int = 0) -> str:
    """Log `model` into the active run `run_id` as the LoggedModel `name` (harness.build.model_name:
    'unet-w32'; runs logged before #42 called every model 'model') with torch.export ('pt2', MLflow 3's
    default off Databricks: no pickle on load) and attach the run's metrics that describe it
    (link_metrics). Returns the model id. `step`: the epoch the weights are from (the `epoch` tag).

    The signature marks batch, height and width as dynamic (-1), so the exported program accepts
    any size; `example` (N, 3, H, W), float in [0, 1], needs N > 1 for the batch dim to stay dynamic.
    """
    model = model.eval().cpu()
    example = example.cpu().float()
    with torch.no_grad():
        output = model(example)
    signature = ModelSignature(
        # Unnamed specs: a named input makes pyfunc pass a dict, which the torch flavor refuses.
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, output.shape[1], -1, -1))]),
    )
    # Requirements are known exactly; letting MLflow infer them re-imports the model in a
    # subprocess, which cost ~15 s per run (measured with cProfile on the debug spec).
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    info = mlflow.pytorch.log_model(model, name=name, signature=signature, input_example=example.numpy(),
                                    serialization_format="pt2", pip_requirements=requirements, step=UNUSED_STEP)
    # source_tags: the model's "Logged from" is the harness command too, not MLflow's '__main__.py'
    mlflow.set_logged_model_tags(info.model_id, {"epoch": str(step), "mlflow_run_id": run_id, **source_tags()})
    link_metrics(run_id, info.model_id, step)
    return info.model_id


def link_metrics(run_id: str, model_id: str, epoch: int) -> int:
    """Attach the run's LINKED metrics to its LoggedModel `model_id`: test/* and model/* as last
    logged, val/* of `epoch`, each against its split's dataset input. Each is logged again with its
    own timestamp, step and value, which MLflow stores once in the run (it de-duplicates on those)
    and once for the model; keys the model has already are skipped. Returns how many were attached."""
    client = store_client()
    run = client.get_run(run_id)
    attached = {m.key for m in client.get_logged_model(model_id).metrics or []}
    inputs = {t.value: {"dataset_name": i.dataset.name, "dataset_digest": i.dataset.digest}
              for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    metrics = []
    for key in sorted(run.data.metrics):
        prefix = next((p for p in LINKED if key.startswith(p)), None)
        if prefix is None or key in attached:
            continue
        history = client.get_metric_history(run_id, key)
        last = max(history, key=lambda m: (m.step, m.timestamp))
        chosen = [m for m in history if m.step == epoch] if prefix == "val/" else [last]
        metrics += [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                           **inputs.get(LINKED[prefix], {})) for m in chosen]
    if metrics:
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    return len(metrics)


def logged_model_id(run_id: str) -> str | None:
    """The id of the LoggedModel the run logged last (log_model: true, or `make register`), or None."""
    outputs = store_client().get_run(run_id).outputs
    models = outputs.model_outputs if outputs else []
    return models[-1].model_id if models else None


def logged_model_uri(run_id: str) -> str | None:
    """`runs:/<run id>/<model name>` of the LoggedModel the run logged last, or None: the name is the
    model's own ('unet-w32'), or 'model' for a run logged before models were named (#42)."""
    model_id = logged_model_id(run_id)
    return f"runs:/{run_id}/{store_client().get_logged_model(model_id).name}" if model_id else None


def log_model_to_run(run_id: str, model: torch.nn.Module, example: torch.Tensor, name: str, step: int = 0) -> str:
    """Log `model` as `name` into the finished run `run_id` (one trained with log_model: false): the run
    is reopened for it and ends with the status it had. Returns the model id."""
    status = store_client().get_run(run_id).info.status
    mlflow.set_tracking_uri(default_tracking_uri())
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        model_id = log_model(run_id, model, example, name, step)
        mlflow.set_tag("model.logged_by", "register")
        mlflow.end_run(status)
    return model_id


def register(model_id: str, name: str, alias: str | None) -> str:
    """Register LoggedModel `model_id` as a new version of registered model `name`, pointing `alias`
    at it if given. Returns the version number."""
    mlflow.set_tracking_uri(default_tracking_uri())
    version = mlflow.register_model(f"models:/{model_id}", name).version
    if alias:
        MlflowClient(default_tracking_uri()).set_registered_model_alias(name, alias, version)
    return str(version)


def load_model(run_id: str, tracking_uri: str | None = None) -> torch.nn.Module:
    """The model the run logged last (by `log_model`), whatever its name: 'unet-w32', or 'model' in a
    run logged before models were named."""
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    model_id = logged_model_id(run_id)
    if model_id is None:
        raise LookupError(f"run {run_id} logged no model")
    model = mlflow.pytorch.load_model(f"models:/{model_id}", map_location="cpu")
    # torch.export's module refuses train() and eval() (NotImplementedError), which evaluate calls: it
    # was exported in eval mode (log_model), fixed in its graph, so both may leave it as it is.
    model.train = types.MethodType(lambda self, mode=True: self, model)
    model.eval = types.MethodType(lambda self: self, model)
    return model
