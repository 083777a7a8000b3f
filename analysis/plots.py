"""Figures for reports and notebooks: tidy DataFrames in, seaborn/matplotlib figures out."""

from __future__ import annotations

import sys

import matplotlib

if "ipykernel" not in sys.modules:  # headless scripts and reports; notebooks keep their inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.stats import summarize_arm  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _order(frame: pd.DataFrame, arm: str) -> list:
    """Arms in order of first appearance, so every figure gives an arm the same colour."""
    return list(dict.fromkeys(frame[arm]))


def learning_curves(history: pd.DataFrame, arm: str = "arm", metric: str = "val/dice"):
    """history: run_id, metric, epoch, value, <arm>. Mean over runs with a 95% CI band."""
    data = history[history.metric == metric]
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=data, x="epoch", y="value", hue=arm, hue_order=_order(history, arm), errorbar=("ci", 95),
                 marker="o", ax=ax)
    ax.set(ylabel=metric, title=f"{metric} per epoch (mean over runs, 95% CI band)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def time_to_score(history: pd.DataFrame, arm: str = "arm", metric: str = "val/dice"):
    """metric against cumulative training wall time (sum of time/epoch_s), one line per run."""
    wide = history.pivot_table(index=["run_id", arm, "epoch"], columns="metric", values="value").reset_index()
    wide = wide.sort_values(["run_id", "epoch"])
    wide["wall_s"] = wide.groupby("run_id")["time/epoch_s"].cumsum()
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=wide, x="wall_s", y=metric, hue=arm, hue_order=_order(history, arm), units="run_id",
                 estimator=None, marker="o", ax=ax)
    ax.set(xlabel="training wall time (s)", ylabel=metric, title=f"Time to {metric}")
    fig.tight_layout()
    return fig


def paired_scatter(paired: pd.DataFrame, a: str, b: str, metric: str = "test Dice"):
    """paired: one row per image with columns a and b (a per-image score in [0, 1], named `metric`).
    Scatter + difference histogram."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    sns.scatterplot(data=paired, x=a, y=b, s=14, alpha=0.6, ax=left)
    left.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    name = metric.split()[-1]
    left.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel=f"{name}, {a}", ylabel=f"{name}, {b}", title=f"Per-image {metric}")
    sns.histplot(paired[b] - paired[a], bins=30, ax=right)
    right.axvline(0, color="grey", ls="--")
    right.set(xlabel=f"{name}({b}) - {name}({a})", title="Paired differences")
    fig.tight_layout()
    return fig


def summary_bars(runs: pd.DataFrame, arm: str = "arm", metric: str = "test/dice"):
    """Each run's `metric` (points) and each arm's mean with the interval every table gives it
    (stats.summarize_arm: a t over runs below FEW_RUNS runs)."""
    order = _order(runs, arm)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.stripplot(data=runs, x=arm, y=metric, order=order, color="black", alpha=0.5, ax=ax)
    arms = [summarize_arm(runs.loc[runs[arm] == level, metric]) for level in order]
    means = [a.mean for a in arms]
    low = [a.mean - a.interval.low if a.interval else 0.0 for a in arms]
    high = [a.interval.high - a.mean if a.interval else 0.0 for a in arms]
    ax.errorbar(range(len(order)), means, yerr=[low, high], fmt="o-", color="C0", capsize=4, zorder=3)
    ax.set(title=f"{metric} per run (points) and mean with 95% CI over runs")
    fig.tight_layout()
    return fig


def worst_k_grid(images, truths, predictions: dict, names: list[str], scores: dict):
    """One row per image: the image, its truth, then each arm's prediction with that arm's Dice.

    images (k, H, W, 3) uint8; truths (k, H, W) bool; predictions {arm: (k, H, W) bool or None};
    scores {arm: [Dice per row]}.
    """
    arms = list(predictions)
    k, cols = len(names), 2 + len(arms)
    fig, axes = plt.subplots(k, cols, figsize=(2.1 * cols, 2.1 * k), squeeze=False)
    for row in range(k):
        panels = [(images[row], names[row]), (truths[row], "truth")]
        for arm in arms:
            pred = predictions[arm]
            title = f"{arm}\nDice {scores[arm][row]:.3f}" if pred is not None else f"{arm}\n(no run)"
            panels.append((pred[row] if pred is not None else None, title))
        for ax, (pixels, title) in zip(axes[row], panels):
            if pixels is not None:
                ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0,
                          vmax=1 if pixels.ndim == 2 else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


def effect_forest(table: pd.DataFrame, label: str, title: str = "Effect of each level"):
    """table: one row per level with mean_diff, ci_low, ci_high (vs the reference level)."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(table) + 1.5))
    y = range(len(table))
    ax.errorbar(table["mean_diff"], y, xerr=[table["mean_diff"] - table["ci_low"],
                                             table["ci_high"] - table["mean_diff"]],
                fmt="o", capsize=4)
    ax.axvline(0, color="grey", ls="--")
    ax.set_yticks(list(y), table["level"].astype(str))
    ax.set(xlabel=f"per-image test Dice difference vs {label} (95% CI)", title=title)
    fig.tight_layout()
    return fig
