"""Holm over the verdicts recorded in docs/results.md, for campaigns whose runs are not in this store.

    python -m analysis.recorded                       # docs/recorded_verdicts.csv
    python -m analysis.recorded --csv my_cells.csv --alpha 0.05

Each row of the CSV is one per-setting comparison as it was published: the R34 - UNet estimate, its
95% interval over runs and images, and the verdict the old rule gave (each at 5% alone). Without the
runs, the p-value is read back from the interval as a normal one would give it (se = width / 3.92,
two-sided), then Holm adjusts over two families: all rows (what `make overview` prints together) and
each campaign's rows (what its report prints together). Dice only: NSD was not recorded for these
campaigns, so a rerun's families, which hold both, are twice these. This approximates what `make overview`
computes from the runs; it is not that. The old intervals were percentile bootstraps over 3-6 seeds,
which are too narrow (7-10% of null campaigns excluded 0: `python -m analysis.null_rates`), so these
p-values are if anything too small, and a verdict that survives here is an upper bound on what a
rerun would keep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.stats import ALPHA, holm

RECORDED = Path(__file__).resolve().parent.parent / "docs" / "recorded_verdicts.csv"
Z = sps.norm.ppf(1 - ALPHA / 2)


def reread(cells: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """`cells` (campaign, estimate, low, high, old_verdict) plus p (from the interval); p_holm and
    new_verdict over all rows as one family ('real' where p_holm < alpha, else 'not shown'); and
    p_holm_campaign, campaign_family and campaign_verdict with each campaign's rows as its family."""
    se = (cells["high"] - cells["low"]) / (2 * Z)
    out = cells.assign(p=2 * sps.norm.sf(np.abs(cells["estimate"] / se)))
    out["p_holm"] = holm(out["p"].to_numpy())
    out["new_verdict"] = np.where(out["p_holm"] < alpha, "real", "not shown")
    by_campaign = out.groupby("campaign")["p"]
    out["p_holm_campaign"] = by_campaign.transform(lambda p: holm(p.to_numpy()))
    out["campaign_family"] = by_campaign.transform("size")
    out["campaign_verdict"] = np.where(out["p_holm_campaign"] < alpha, "real", "not shown")
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=RECORDED,
                        help="campaign,setting,estimate,low,high,old_verdict rows (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="family-wise error rate (default: %(default)s)")
    args = parser.parse_args(argv)
    out = reread(pd.read_csv(args.csv), args.alpha)
    shown = out.sort_values("p")[["campaign", "setting", "estimate", "low", "high", "p", "old_verdict",
                                  "p_holm_campaign", "campaign_family", "campaign_verdict", "p_holm", "new_verdict"]]
    with pd.option_context("display.width", 200, "display.max_rows", None):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    old = out["old_verdict"] == "real"
    print(f"\n{int(old.sum())} of {len(out)} called real at 5% each; under Holm at FWER {args.alpha:g}, "
          f"{int((old & (out['campaign_verdict'] == 'real')).sum())} stay real with each campaign as its family, "
          f"{int((old & (out['new_verdict'] == 'real')).sum())} with all {len(out)} as one family")
    return out


if __name__ == "__main__":
    main()
