"""Score a trained run on another labelled dataset: an evaluation run beside the training runs.

    python -m harness evaluate --run <run id> --data <root> [--dataset folder] [--split test]

The run's own data settings (image size, foreground rule, classes, target) are kept with the new
root, and the split is scored exactly as a training run's test: at each image's stored size, Dice,
IoU, NSD, HD95, and the training-size scores. The result is an MLflow run in experiment
`<source experiment>-evaluation`, tagged run.kind=evaluation, with the source run, its arch and
seed, and the dataset as an MLflow dataset input. Evaluating the same run on the same data and
split again is skipped. `make report EVALUATION=<dataset name or fingerprint>` compares them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from harness import outputs
from harness.build import build_loss, dtype_name, resolve_amp, select_device, spec_data
from harness.config.catalog import DATASETS, ON_DISK
from harness.config.load import ExperimentSpec, flatten
from harness.data import LoaderSettings, make_loader
from harness.engine.step import StepConfig
from harness.engine.stored_size import score_split
from harness.metrics import per_image_scores
from harness.tools.trained import run_threshold, source_spec, trained_model
from harness.tracking.base import open_run
from harness.tracking.mlflow import find_runs, run_experiment_name, run_tags
from harness.tracking.provenance import environment, git_state

SUFFIX = "-evaluation"
SPLITS = ("test", "val", "train")
RESET = {"folds": None, "fold": 0, "limit": None, "images_dir": None, "masks_dir": None, "mask_suffix": None}


@dataclass
class Evaluation:
    run_id: str
    skipped: bool
    metrics: dict[str, float]


def target_spec(spec: ExperimentSpec, root: str, dataset: str | None) -> ExperimentSpec:
    """The source spec pointed at `root`: same image size, foreground rule, classes and target;
    the source's split, limit and layout settings do not carry to other data."""
    d = spec.to_dict()
    d["data"] |= {**RESET, "root": str(Path(root).resolve()), "dataset": dataset or d["data"]["dataset"]}
    if not DATASETS[d["data"]["dataset"]].on_disk:  # else the generator would be scored, not the files at root
        raise LookupError(f"the run trained on {d['data']['dataset']} data; name the layout of {root} "
                          f"(--dataset {' or '.join(ON_DISK)})")
    return ExperimentSpec.model_validate(d)


def evaluate_run(run_id: str, root: str, dataset: str | None = None, split: str = "test") -> Evaluation:
    """Evaluate `run_id` on `split` of the dataset at `root` (see the module docstring)."""
    source = source_spec(run_id)
    spec = target_spec(source, root, dataset)
    data = spec_data(spec)
    part = getattr(data, split)
    name = Path(root).resolve().name
    experiment = run_experiment_name(run_id) + SUFFIX
    identity = {"run.kind": "evaluation", "source.run_id": run_id, "data.fingerprint": data.fingerprint,
                "evaluation.split": split}
    if done := find_runs(experiment, identity, status="FINISHED"):
        print(f"run {run_id} was evaluated on {name} ({split}) already: run {done[0]}; skipped")
        return Evaluation(done[0], True, {})
    model, origin = trained_model(run_id, source)
    device = select_device(spec.train.device)
    cfg = StepConfig(device, resolve_amp(spec.train.amp, device), spec.train.channels_last, spec.data.num_classes)
    model = model.to(device)
    loader = make_loader(part, LoaderSettings(spec.train.batch_size, num_workers=spec.data.num_workers))
    tags = {**identity, **_source_tags(run_id, source), "evaluation.dataset": name, "evaluation.weights": origin,
            "amp.dtype": dtype_name(cfg.amp_dtype), **git_state(), **environment(device)}
    with open_run(experiment, f"eval-{source.name}-{name}", flatten(spec.to_dict()), tags) as tracker:
        outputs.log_splits(tracker, data, spec.data.dataset, spec.data.root, splits=(split,))
        cfg = replace(cfg, threshold=run_threshold(run_id, source))  # the threshold the run's own test used
        scores = score_split(model, loader, build_loss(spec), cfg, part, tolerance=spec.eval.nsd_tolerance)
        tracker.log_metrics({**scores.metrics, **scores.at_train_size}, step=0)
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifact(outputs.write_per_image(Path(tmp) / "test_per_image.csv", part.names,
                                                         scores.scored, scores.counts))
        outputs.log_predictions(tracker, part, scores.predictions.numpy(), per_image_scores(scores.counts)["dice"])
    return Evaluation(tracker.run_id, False, scores.metrics)


def _source_tags(run_id: str, spec: ExperimentSpec) -> dict[str, str]:
    """What a report needs of the source: its arch and seed, its campaign and that campaign's axes, and
    its cell tags as they are (cell.<axis>: an axis such as a campaign's variant is no spec field)."""
    tags = run_tags(run_id)
    out = {"source.model.arch": spec.model.arch, "source.seed": spec.seed, "source.spec_hash": spec.spec_hash(),
           **{k: v for k, v in tags.items() if k.startswith("cell.")}}
    for key in ("campaign", "campaign.axes", "amp.dtype", "data.fingerprint"):
        if key in tags:
            out[f"source.{key}"] = tags[key]
    return out
