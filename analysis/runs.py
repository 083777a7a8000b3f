"""MLflow runs -> tidy pandas DataFrames. The one place that knows metric and param names.

Reads the store through `mlflow.search_runs` and the run artifacts; nothing here imports
`harness`, so analyses keep working on runs made by older versions of the training code.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

# One bar per artifact download drowns a report over dozens of runs; callers show one bar over runs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TEST_METRICS = ["test/dice", "test/dice_micro", "test/iou", "test/iou_micro", "test/pixel_acc", "test/nsd",
                "test/hd95"]
EPOCH_METRICS = ["train/loss", "val/loss", "val/dice", "val/dice_micro", "val/iou", "lr", "time/epoch_s",
                 "throughput/train_img_s"]
KEY_PARAMS = ["model.arch", "model.base_width", "model.upsample", "model.padding_mode", "model.downsample",
              "model.activation", "model.dropout", "model.deep_supervision", "train.loss", "train.lr",
              "train.optimizer", "train.epochs", "data.dataset", "data.image_size", "data.foreground",
              "data.num_classes", "data.target", "seed"]
FOLD = "data.fold"  # like the seed, a replicate: runs differing only in it form one arm
KEY_TAGS = ["campaign", "spec_hash", "git.commit", "git.dirty", "data.fingerprint", "device", "amp.dtype",
            "campaign.delta", "campaign.sequential"]


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlruns/mlflow.db').resolve()}"


NUMERIC_PARAMS = ("model.base_width", "train.lr", "train.epochs", "data.image_size", "seed")
FINAL_METRICS = [*TEST_METRICS, "test/miou", "model/num_params", "best/val_dice", "time/total_s",
                 "throughput/train_img_s"]


def with_test_input(raw: pd.DataFrame, context: str = "test") -> pd.DataFrame:
    """`raw` (mlflow.search_runs) with each run's data read from its `context` dataset input, as
    MLflow records it (name, digest): `dataset.<context>` holds the name, and the data fingerprint
    (tags.data.fingerprint) is the input's digest. A run made before the harness logged inputs keeps
    its tag and has no name."""
    raw = raw.copy()
    found: dict[str, tuple[str, str]] = {}
    ids = list(raw["run_id"]) if "run_id" in raw else []
    for lo in range(0, len(ids), 100):  # one query per 100 runs: search_runs returns inputs, pandas does not
        chunk = ", ".join(f"'{i}'" for i in ids[lo:lo + 100])
        for run in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                      filter_string=f"attributes.run_id IN ({chunk})"):
            for inp in run.inputs.dataset_inputs if run.inputs else []:
                if any(t.key == "mlflow.data.context" and t.value == context for t in inp.tags):
                    found[run.info.run_id] = (inp.dataset.name, inp.dataset.digest)
    raw[f"dataset.{context}"] = [found.get(i, (None, None))[0] for i in ids]
    digest = pd.Series([found.get(i, (None, None))[1] for i in ids], index=raw.index, dtype=object)
    raw["tags.data.fingerprint"] = digest.fillna(raw.get("tags.data.fingerprint", pd.Series(index=raw.index)))
    return raw


def _tidy(raw: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """mlflow.search_runs output -> one row per run with named params, tags and final metrics.

    Params stay strings in MLflow; the numeric ones are converted here. Missing columns are NaN.
    """
    out = pd.DataFrame({"run_id": raw["run_id"], "status": raw["status"], "start_time": raw["start_time"]})
    for name in dict.fromkeys(params):
        out[name] = raw.get(f"params.{name}")
    for name in KEY_TAGS:
        out[name] = raw.get(f"tags.{name}")
    out["dataset.test"] = raw.get("dataset.test")
    for name in FINAL_METRICS:
        out[name] = pd.to_numeric(raw.get(f"metrics.{name}"), errors="coerce")
    for name in NUMERIC_PARAMS:
        if name in out:
            out[name] = pd.to_numeric(out[name], errors="coerce")
    return out


def load_runs(experiment: str, uri: str | None = None, status: str | None = "FINISHED") -> pd.DataFrame:
    """One row per run of `experiment`: run_id, status, start_time, key params, tags, final metrics."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    filter_string = f"attributes.status = '{status}'" if status else ""
    raw = mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string, output_format="pandas")
    if raw.empty:
        return pd.DataFrame(columns=["run_id", "status", "start_time", *KEY_PARAMS, *KEY_TAGS, *FINAL_METRICS])
    return _tidy(with_test_input(raw), KEY_PARAMS)


# Params that cannot change a result: campaigns that differ only in these are not different settings.
NO_EFFECT_PARAMS = {"name", "tracking", "log_model", "log_system_metrics", "data.cache", "data.cache_dir",
                    "data.download", "data.num_workers"}


def campaign_list(campaign: str | list[str] | None) -> list[str]:
    """One name, several, or none (an experiment's runs) -> a list of campaign names."""
    return [campaign] if isinstance(campaign, str) else list(campaign or [])


def load_campaign(campaign: str | list[str] | None = None, experiment: str | None = None, uri: str | None = None,
                  status: str = "FINISHED") -> tuple[pd.DataFrame, list[str]]:
    """Runs of a campaign (by tag, in any experiment), or all runs of an experiment.

    Returns (runs, axes): one row per run with the key params, tags and test metrics, plus an
    `arm` column naming the cell without its seed; axes are the campaign's matrix fields.

    Several campaigns (a list) are pooled as one: their axes, preceded by every param that is
    constant within each campaign but differs between them (so `unet_vs_resnet34_full` and
    `arch_by_augment_full` become one campaign over `augment`). A cell run in more than one of them
    is counted once, the run of the campaign named first. Runs that trained in more than one
    precision (tag amp.dtype) or on more than one version of the data (data.fingerprint) have it as
    their first axis, unless an axis accounts for it (train.amp; data.image_size, data.root, ...).
    """
    mlflow.set_tracking_uri(tracking_uri(uri))
    clause = f"attributes.status = '{status}'"
    if not campaign:
        raw = mlflow.search_runs(experiment_names=[experiment], filter_string=clause)
        if raw.empty:
            raise LookupError(f"no {status} runs for experiment {experiment!r}")
        raw = with_test_input(raw)
        axes = [*_unexplained_tags(raw, []), "model.arch", "seed"]
        return _with_arms(raw.sort_values("start_time"), axes), axes
    names = campaign_list(campaign)
    frames = [mlflow.search_runs(search_all_experiments=True, filter_string=f"{clause} and tags.campaign = '{name}'")
              for name in names]
    if missing := [name for name, raw in zip(names, frames) if raw.empty]:
        raise LookupError(f"no {status} runs for campaign {', '.join(map(repr, missing))}")
    axes = list(dict.fromkeys(a for raw in frames for a in _axes(raw)))
    if len(frames) > 1:
        differ = _differing_params(frames)
        axes = [*differ, *[a for a in axes if a not in differ]]
    kept, extras = zip(*(one_run_per_cell(raw) for raw in frames))
    raw = with_test_input(pd.concat([raw.sort_values("start_time") for raw in kept], ignore_index=True))
    axes = [*_unexplained_tags(raw, axes), *axes]
    runs = _with_arms(raw, axes)
    runs.attrs["extra_runs"] = [row for extra in extras for row in extra]
    if len(frames) > 1:
        if absent := [a for a in axes if runs[a].isna().any()]:
            raise LookupError(f"campaigns {', '.join(names)} cannot be pooled: {', '.join(absent)} is not recorded "
                              "for every run")
        runs = runs.drop_duplicates(subset=axes, keep="first").reset_index(drop=True)
    return runs, axes


CELL_IDENTITY = ["tags.campaign", "tags.campaign.cell", "tags.spec_hash", "tags.amp.dtype", "tags.data.fingerprint"]


def one_run_per_cell(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """(raw with one FINISHED run per campaign cell, the extras): a cell is its campaign, cell tags,
    spec hash, precision and data. Where the store holds more than one (a worker that woke up late
    finished a cell another had finished), the run that finished first counts (end time, then run id);
    the others are listed, never counted as seeds."""
    keys = [k for k in CELL_IDENTITY if k in raw]
    if "tags.campaign.cell" not in raw or raw.empty:
        return raw, []
    ordered = raw.sort_values(["end_time", "run_id"]) if "end_time" in raw else raw.sort_values("run_id")
    extras, drop = [], []
    for _, group in ordered[ordered["tags.campaign.cell"].notna()].groupby(keys, dropna=False, sort=False):
        extras += [{"run_id": run, "cell": group["tags.campaign.cell"].iloc[0], "counted": group["run_id"].iloc[0]}
                   for run in group["run_id"].iloc[1:]]
        drop += list(group.index[1:])
    return ordered.drop(index=drop), extras


def load_evaluation(dataset: str, uri: str | None = None, split: str = "test") -> tuple[pd.DataFrame, list[str]]:
    """Evaluation runs (`python -m harness evaluate`: tag run.kind=evaluation) of `split` of one
    dataset, named by its folder name or its data fingerprint: found through the runs' dataset input
    (name '<folder>-<split>', digest = fingerprint), else through their tags (evaluation.dataset,
    data.fingerprint); as load_campaign returns them, with the source campaign's axes (else
    model.arch and seed)."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    clause = (f"attributes.status = 'FINISHED' and tags.`run.kind` = 'evaluation' "
              f"and tags.`evaluation.split` = '{split}'")
    raw = pd.DataFrame()
    for where in (f"dataset.name = '{dataset}-{split}'", f"dataset.digest = '{dataset}'",
                  f"tags.`evaluation.dataset` = '{dataset}'", f"tags.`data.fingerprint` = '{dataset}'"):
        raw = mlflow.search_runs(search_all_experiments=True, filter_string=f"{clause} and {where}")
        if not raw.empty:
            break
    if raw.empty:
        raise LookupError(f"no finished evaluation runs of the {split} split of dataset {dataset!r} (a folder name "
                          "or data fingerprint); make evaluate RUN=<run id> DATA=<root> makes them")
    raw = with_test_input(raw, split)
    tagged = raw["tags.source.campaign.axes"].dropna() if "tags.source.campaign.axes" in raw else []
    axes = tagged.iloc[0].split(",") if len(tagged) else ["model.arch", "seed"]
    axes = [*_unexplained_tags(raw, axes), *axes]
    runs = _with_arms(raw.sort_values("start_time"), axes)
    runs["source_run_id"] = raw.sort_values("start_time")["tags.source.run_id"].to_numpy()  # their training curves
    return runs, axes


def _axes(raw: pd.DataFrame) -> list[str]:
    """A campaign's matrix fields, from the tag its newest run carries (cells ran in matrix order)."""
    tagged = raw["tags.campaign.axes"].dropna() if "tags.campaign.axes" in raw else []
    return tagged.iloc[0].split(",") if len(tagged) else ["model.arch", "seed"]


# What a run trained with beyond its spec, as tags, and the spec fields that decide each. `amp: auto`
# trains in bf16 on one machine and float32 on another (a CPU without native bf16); the data's
# content can change under the same data.root. Runs of one spec that differ in one of these are two
# cells (a campaign re-runs a cell finished in the other precision), never more seeds.
RESULT_TAGS = {"amp.dtype": ("train.amp", "train.device"), "data.fingerprint": ("data.",)}


def _unexplained_tags(raw: pd.DataFrame, axes: list[str]) -> list[str]:
    """The RESULT_TAGS with more than one value among the runs that the axes deciding them (if any)
    do not account for: leading axes, so that every comparison is made within one precision and one
    version of the data, while a campaign over `train.amp` or `data.image_size` still compares its
    levels. A run that predates a tag is 'unrecorded' there."""
    found = []
    for name, deciders in RESULT_TAGS.items():
        tag = f"tags.{name}"
        if tag not in raw or raw[tag].nunique() < 2:
            continue
        by = [f"params.{a}" for a in axes if a.startswith(deciders) and f"params.{a}" in raw]
        if by and (raw.groupby(by)[tag].nunique() < 2).all():
            continue
        raw[tag] = raw[tag].fillna("unrecorded")
        found.append(name)
    return found


def _differing_params(frames: list[pd.DataFrame]) -> list[str]:
    """Params recorded by every campaign, constant within each, with different values between them."""
    common = set.intersection(*({c[len("params."):] for c in raw if c.startswith("params.")} for raw in frames))
    values = {name: [raw[f"params.{name}"].dropna().unique() for raw in frames]
              for name in sorted(common - NO_EFFECT_PARAMS)}
    return [name for name, per in values.items()
            if all(len(v) == 1 for v in per) and len({v[0] for v in per}) > 1]


def _with_arms(raw: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """_tidy's frame with each axis's column and the `arm` column (the cell without its seed and fold)."""
    runs = _tidy(raw, [*KEY_PARAMS, *axes])
    for axis in axes:  # an axis that is no spec field (a campaign's 'variant') lives in the cell tags
        if runs[axis].isna().all() and f"tags.cell.{axis}" in raw:
            runs[axis] = raw[f"tags.cell.{axis}"].to_numpy()
    arm_axes = [a for a in axes if a not in ("seed", FOLD)] or ["model.arch"]
    runs["arm"] = runs[arm_axes].astype(str).agg(" / ".join, axis=1)
    return runs


def log_report(path: str | Path, name: str, experiment: str, tags: dict[str, str], uri: str | None = None) -> str:
    """Log a report file as the artifact of a dedicated run (tag run.kind=report). Returns its id."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=name, tags={"run.kind": "report", **tags}) as run:
        mlflow.log_artifact(str(path))
    return run.info.run_id


def experiment_name(run_id: str, uri: str | None = None) -> str:
    client = MlflowClient(tracking_uri(uri))
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def load_history(run_ids: list[str], uri: str | None = None, metrics: list[str] = EPOCH_METRICS) -> pd.DataFrame:
    """Long table of per-epoch metrics: run_id, metric, epoch, value."""
    client = MlflowClient(tracking_uri(uri))
    rows = [(rid, key, m.step, m.value) for rid in run_ids for key in metrics
            for m in client.get_metric_history(rid, key)]
    return pd.DataFrame(rows, columns=["run_id", "metric", "epoch", "value"])


def load_per_image(run_id: str, uri: str | None = None) -> pd.DataFrame:
    """The run's `test_per_image.csv`: name, dice, iou, tp, fp, fn, tn, fg_pixels."""
    client = MlflowClient(tracking_uri(uri))
    frame = pd.read_csv(client.download_artifacts(run_id, "test_per_image.csv"))
    frame.insert(0, "run_id", run_id)
    return frame


def load_predictions(run_id: str, uri: str | None = None) -> dict | None:
    """The run's `test_predictions.npz`, unpacked: names, pred and truth (N, H, W) bool, worst
    (indices of the run's worst test images by Dice) and worst_images (k, H, W, 3) uint8.
    None for runs made before the harness logged it."""
    client = MlflowClient(tracking_uri(uri))
    try:
        path = client.download_artifacts(run_id, "test_predictions.npz")
    except Exception:  # noqa: BLE001 (MLflow raises several types for a missing artifact)
        return None
    with np.load(path, allow_pickle=False) as z:
        shape = tuple(int(v) for v in z["shape"])
        size = int(np.prod(shape))
        return {"names": [str(n) for n in z["names"]],
                "pred": np.unpackbits(z["pred_bits"])[:size].reshape(shape).astype(bool),
                "truth": np.unpackbits(z["true_bits"])[:size].reshape(shape).astype(bool),
                "worst": z["worst"].tolist(), "worst_images": z["worst_images"]}


def margin_of(runs: pd.DataFrame, given: float | None = None) -> tuple[float | None, bool]:
    """(equivalence margin, post hoc): the one the campaign declared (tag campaign.delta), or `given`
    on the command line, which is post hoc unless the campaign declared the same. LookupError when
    the runs declare different margins."""
    declared = sorted({float(v) for v in runs.get("campaign.delta", pd.Series(dtype=object)).dropna()})
    if len(declared) > 1 and given is None:
        raise LookupError(f"these runs declare different equivalence margins {declared}: give one with --delta")
    if given is not None:
        return given, declared != [given]
    return (declared[0], False) if declared else (None, False)
