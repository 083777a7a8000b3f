"""A plan's renderings: the Markdown table `make plan` prints, the report's section, and the power curves.
They read analysis.plan.MetricPlan and compute nothing but the curves' points."""

from __future__ import annotations

import numpy as np

from analysis.plan import MetricPlan
from analysis.power import power
from analysis.results import METRICS


def section(plans: list[MetricPlan], png) -> str:
    """The report's section: each plan's components, MDE table and sentences, and the power curves
    (png: a matplotlib figure -> what the page embeds)."""
    import pandas as pd

    from analysis import render

    shown = [{"title": f"{METRICS.get(p.components.metric, p.components.metric)}: {p.arms[1]} vs {p.arms[0]}",
              "components": p.components, "sentence": p.sentence(), "equivalence": p.equivalence_sentence(),
              "caveat": p.caveat(),
              "table": render.html_table(pd.DataFrame([{"design": name, "folds": d.folds, "seeds per fold": d.seeds,
                                                        "test images": d.images, "runs": d.runs,
                                                        "minimal detectable effect": round(m, 4),
                                                       "smallest equivalence margin": round(e, 4)}
                                                       for name, d, m, e in p.rows]), index=False)} for p in plans]
    return render.fragment("sections/plan.html.j2", plans=shown, family=plans[0].family, delta=f"{plans[0].delta:g}",
                           power_pct=f"{plans[0].target:.0%}", figure=png(power_figure(plans)))


def table(plan: MetricPlan) -> list[str]:
    """The plan of one metric as Markdown lines: components, then each design's MDE."""
    c = plan.components
    name = METRICS.get(c.metric, c.metric)
    lines = [f"### {name}: {plan.arms[1]} - {plan.arms[0]} (observed {c.effect:+.4f}; family of {plan.family}, "
             f"power {plan.target:.0%})", "",
             f"Components (sd): arm x image {c.interaction_sd:.4f}, run x image {c.noise_sd:.4f}, "
             f"seed {c.seed_sd:.4f}, fold {c.fold_sd:.4f}.", "",
             "| design | runs | minimal detectable effect | smallest equivalence margin |", "|---|---|---|---|"]
    lines += [f"| {name}: {d.label()} | {d.runs} | {m:.4f} | {e:.4f} |" for name, d, m, e in plan.rows]
    return lines + ["", plan.sentence(), plan.equivalence_sentence(), *filter(None, [plan.caveat()]), ""]


def _ticks(low: float, high: float) -> list[float]:
    """Round values (1, 2, 5 x 10^k) between low and high > 0, at most about 6 of them."""
    values = [m * 10.0 ** k for k in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
              for m in (1, 2, 5)]
    inside = [v for v in values if low <= v <= high]
    return inside[:: max(1, -(-len(inside) // 6))]


def power_figure(plans: list[MetricPlan]):
    """Power against the true difference for each design of each plan (one panel per plan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(plans), figsize=(6 * len(plans), 4), squeeze=False)
    for ax, plan in zip(axes[0], plans):
        finite = [m for _, _, m, _ in plan.rows if np.isfinite(m)] or [plan.delta]
        grid = np.geomspace(min(finite) / 4, max(max(finite), plan.delta) * 2, 14)
        for name, d, *_ in plan.rows:
            ax.plot(grid, [power(plan.components, d, x, plan.family, sims=400) for x in grid], label=name)
        ax.axvline(plan.delta, color="grey", ls="--")
        ax.axhline(plan.target, color="grey", ls=":")
        ax.set(xscale="log", xlabel=f"true {plan.components.metric} difference", ylabel="power of 'real'",
               title=f"{plan.components.metric}: {plan.arms[1]} vs {plan.arms[0]}")
        # Plain labels at a few round values: over less than a decade a log axis labels its minor ticks
        # as 3x10^-2, 4x10^-2, ..., which overlap.
        ax.set_xticks(_ticks(grid[0], grid[-1]))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
