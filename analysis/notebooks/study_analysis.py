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
# # Study analysis
#
# Reads an Optuna study (history, parameter importances, pruned against complete trials) and
# the per-epoch curves of its trials from MLflow. Set `STUDY` and `OPTUNA_STORAGE` (a URL or
# a journal file, default `mlruns/optuna/<STUDY>.journal`) in the environment.

# %%
import os

from analysis.studies import (
                              history_figure,
                              importances,
                              load_study,
                              pruned_vs_complete_curves,
                              state_counts,
                              trials_frame,
)

STUDY = os.environ.get("STUDY", "unet_vs_resnet34")
STORAGE = os.environ.get("OPTUNA_STORAGE", f"mlruns/optuna/{STUDY}.journal")
study = load_study(STUDY, STORAGE)
trials = trials_frame(study)
state_counts(trials)

# %%
trials.sort_values("value", ascending=study.direction.name == "MINIMIZE").head(10)

# %%
history_figure(trials, study.direction.name.lower())

# %% [markdown]
# ## Parameter importances (fANOVA; needs two or more completed trials)

# %%
importances(study) if (trials.state == "COMPLETE").sum() >= 2 else "fewer than two completed trials"

# %% [markdown]
# ## Pruned against complete trials

# %%
pruned_vs_complete_curves(trials)
