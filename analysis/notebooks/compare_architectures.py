# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Compare architectures
#
# Reads one campaign from MLflow through the `analysis` package (never the training code) and
# asks: which arm has the higher test Dice, and is the difference real? Set `CAMPAIGN` (and
# `MLFLOW_TRACKING_URI`) in the environment, or edit the cell below; several names separated by spaces
# pool those campaigns into one (the params they differ in become axes). `AXIS` (e.g. `train.lr`)
# compares another varied field than the architecture.
#
# Dice definitions: per-image = Dice of each test image, averaged; micro = TP/FP/FN summed
# over all test pixels first. Empty truth and empty prediction score 1.

# %%
import os

from analysis import plots
from analysis.overview import forest, overview_table, readable
from analysis.paired import compare_axis, paired_frames, strata_of
from analysis.report import build_report, summary_table
from analysis.runs import load_campaign, load_history
from analysis.sections import setting_tables

CAMPAIGN = os.environ.get("CAMPAIGN", "unet_vs_resnet34").split()
AXIS = os.environ.get("AXIS") or None  # None: model.arch when varied, else the first varied field
runs, axes = load_campaign(CAMPAIGN)
print(f"{len(runs)} finished runs, axes {axes}")
summary_table(runs)

# %% [markdown]
# ## Learning curves (mean over runs: seeds, and folds where there are any; 95% CI band)

# %%
history = load_history(list(runs.run_id), metrics=["val/dice", "time/epoch_s"]).merge(runs[["run_id", "arm"]])
plots.learning_curves(history)

# %% [markdown]
# ## The verdicts
# What `make report` prints, from the same result objects (`analysis.results.Conclusion`): per headline
# metric, the mean paired per-image difference with its CI over images, the Wilcoxon test, and the CI that
# also counts training runs (seeds, and folds where there are any), Holm-adjusted over every comparison
# the report prints. If the runs interval includes 0, another set of seeds could well reverse it.

# %%
report = build_report(CAMPAIGN, axis=AXIS)
print(report.text())
report.conclusions[0].comparison if report.conclusions else None  # an analysis.results.Comparison

# %% [markdown]
# ## Paired per-image comparison
# Each test image's Dice, averaged over the runs of each arm.

# %%
axis = compare_axis(axes, AXIS)
paired = paired_frames(runs, axis, None, strata_of(axes, axis))  # within each setting of the other axes
a, b = paired.levels[0], paired.levels[1]
plots.paired_scatter(paired.wide.rename(columns=str), str(a), str(b))

# %% [markdown]
# ## Under which settings
# When the campaign varies other axes too (augmentation, loss, ...), the same comparison within
# each of their settings, and whether the gap changes between settings (interaction), as adjusted in
# the report.

# %%
within, gaps, _ = setting_tables(paired, report.settings.get("dice"))  # one row per setting
within

# %%
gaps  # empty when there is a single setting

# %% [markdown]
# ## Time to Dice

# %%
plots.time_to_score(history)

# %% [markdown]
# ## Every campaign in the store
# The same comparison for every campaign (what `make overview` writes): pooled over settings,
# within each setting, and the change of the gap between settings, each with its verdict.

# %%
overview = overview_table()
forest(overview)

# %%
readable(overview)
