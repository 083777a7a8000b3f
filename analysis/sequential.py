"""Group-sequential looks at a campaign: the rule at a look, the decisions it takes, and the replay of a
recorded campaign in block order (what `harness campaign` asks between blocks).

    python -m analysis.sequential --simulate [--n 2000] [--seed 0]
    python -m analysis.sequential --replay NAME [--delta 0.01] [--max-blocks 15]   (default: NAME's design)

Boundaries: analysis.spending (Lan-DeMets alpha-spending). The simulation that proves the error
rates: analysis.sequential_simulation.

The rule at look k, for a family of m comparisons: a comparison is "real" when its intersection-union p
(Wilcoxon, image interval, runs interval: `unit_tests`) is below a_k, and "equivalent within +-delta" when
TOST's p is below a_k, with a_k the nominal level of the boundary that spends alpha / m over the looks (its
own spending function at alpha / m, not alpha's levels divided by m: those spend ~2.6%, not 2.5%, per
comparison over 10 looks at m = 2). Both hypotheses of a comparison (no difference; a difference of at least
delta) are disjoint, so at most m of the 2m are true, and spending alpha / m on each keeps the chance of any
wrong "real" or "equivalent", over every look and comparison, at alpha or less (a Bonferroni split of the
spending function; Maurer & Bretz's sequential graphical Holm, 2013, is uniformly more powerful and this is
its conservative special case). Equivalence is a non-binding futility stop for "real": a decision stays as
made, and not stopping would not raise any error rate.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.power import t_parts, tost
from analysis.results import ALPHA
from analysis.spending import Spending, nominal_levels

DEFAULTS = {"delta": 0.01, "spending": "obrien_fleming", "min_blocks": 2, "max_blocks": None}  # the CLI's


@dataclass(frozen=True)
class Design:
    """A sequential campaign: blocks of one cell per arm, in order (fold-major within seed), looks at
    blocks min_blocks..max_blocks, spending alpha over them; delta: the equivalence margin."""

    folds: int
    seeds: int
    delta: float
    min_blocks: int = 2
    spending: Spending = "obrien_fleming"

    @property
    def max_blocks(self) -> int:
        return self.folds * self.seeds

    def looks(self) -> np.ndarray:
        return np.arange(self.min_blocks, self.max_blocks + 1)

    def block(self, k: int) -> tuple[int, int]:
        """(seed, fold) of block k (1-based): fold-major within seed."""
        return (k - 1) // self.folds, (k - 1) % self.folds


def unit_tests(per_unit: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The rule at a look, vectorized over campaigns: (p of "real", TOST's p), each (sims,), from
    per_unit (sims, units, images), the per-image B - A of each unit (a fold, its seeds' runs
    averaged; without folds, a seed). "real": the intersection-union (largest p) of the Wilcoxon and
    the t over images (of the units' mean) and the t over units (their means over images); TOST: both
    t's within +-delta. The report's rule (analysis.stats) with its image bootstrap replaced by the t it
    approximates: 10,000 draws cannot give a p below 2e-4, and early looks test far lower (1e-5 at
    look 3 of 10). The simulation (analysis.sequential_simulation.simulate) runs this same function, so
    it proves the applied rule."""
    d = per_unit.mean(axis=1)
    images, units = t_parts(d), t_parts(per_unit.mean(axis=2))
    with np.errstate(divide="ignore", invalid="ignore"):  # identical units: se 0, p 0 (or nan for a 0 mean)
        p_i, p_u = (2 * stats.t.sf(np.abs(m) / se, df) for m, se, df in (images, units))
        p_tost = np.maximum(tost(*images, delta), tost(*units, delta))
    p_w = stats.wilcoxon(d, axis=1, method="approx").pvalue
    return np.maximum.reduce([p_w, p_i, p_u]), p_tost


def unit_interval(per_unit: np.ndarray, level: float) -> tuple[float, float]:
    """The interval a look justifies, from per_unit (units, images): the hull of unit_tests' two t
    intervals (over images, over units) at confidence 1 - level. At a decision's level (boundary /
    family) it excludes 0 when both t's reject; at twice it, it lies inside +-delta when both TOST
    tests do (a TOST at alpha is the 1 - 2 alpha interval)."""
    lows, highs = [], []
    for mean, se, df in (t_parts(per_unit.mean(axis=0)[None]), t_parts(per_unit.mean(axis=1)[None])):
        half = stats.t.ppf(1 - level / 2, df) * se[0]
        lows.append(mean[0] - half)
        highs.append(mean[0] + half)
    return float(min(lows)), float(max(highs))


@dataclass(frozen=True)
class Decision:
    """A comparison's state after a look: 'real', 'equivalent within +-delta', 'undecided' (the campaign
    goes on) or 'not shown' (undecided at the design's last look); the look (blocks) it was decided at
    (else the last look taken), the boundary's nominal level there (spending alpha / family), its p
    (undecided: the p of "real"; p_equivalence: TOST's, None without one), and the interval the design
    justifies there (`unit_interval`: at 1 - level for "real" and while undecided, 1 - 2 level for
    "equivalent")."""

    metric: str
    arms: tuple
    verdict: str
    look: int
    level: float
    p: float
    p_equivalence: float | None = None
    interval: tuple[float, float] | None = None

    @property
    def decided(self) -> bool:
        return self.verdict not in ("undecided", "not shown")

    def text(self) -> str:
        """'real at look 9 (p 0.00249 < 0.00309)', or for an undecided comparison 'undecided at look 2 (p
        0.0151 for real, 1 for equivalence; boundary 5.39e-07)'."""
        if self.decided:
            return f"{self.verdict} at look {self.look} (p {self.p:.3g} < {self.level:.3g})"
        eq = f", {self.p_equivalence:.3g} for equivalence" if self.p_equivalence is not None else ""
        return f"{self.verdict} at look {self.look} (p {self.p:.3g} for real{eq}; boundary {self.level:.3g})"

    def interval_text(self) -> str:
        """The interval as printed: '[-0.0161, -0.0113]', cut to [-1, +1] (the headline metrics lie in
        [0, 1], so no difference lies outside), or 'unbounded at this look' where it covers all of that:
        at an early look a t on 1 df at the boundary's level (e.g. 4.7e-08) bounds nothing."""
        if self.interval is None:
            return "none"
        low, high = max(self.interval[0], -1.0), min(self.interval[1], 1.0)
        if low <= -1.0 and high >= 1.0:
            return "unbounded at this look"
        return f"[{low:+.4f}, {high:+.4f}]"


@dataclass(frozen=True)
class Replay:
    """A recorded campaign taken look by look: the decisions, the look it stops at (every comparison
    decided) or the last, the complete blocks recorded, runs per block, the family's size, the
    comparisons not decided at the last look taken (Decision 'undecided' or 'not shown', with their p
    there), and the design's planned blocks."""

    decisions: list
    stop: int
    recorded: int
    runs_per_block: int
    family: int
    pending: tuple = ()
    planned: int = 0

    @property
    def stopped(self) -> bool:
        """Every comparison decided (at a look: a record with no look yet, or one arm only, never stops)."""
        return self.family > 0 and len(self.decisions) == self.family

    @property
    def runs_saved(self) -> int:
        """The runs of the planned blocks after the stopping look."""
        return (self.planned - self.stop) * self.runs_per_block if self.stopped else 0


def block_order(runs, folds: bool) -> list[tuple]:
    """The blocks of a campaign's runs in look order: (seed, fold) fold-major within seed, or (seed,)."""
    keys = ["seed", "data.fold"] if folds else ["seed"]
    return sorted(set(runs[keys].itertuples(index=False, name=None)), key=lambda b: tuple(float(x) for x in b))


def _block_key(block) -> tuple:
    return tuple(float(x) for x in block)


def unit_differences(runs, scores, axis: str, a, b, metric: str, folded: bool) -> np.ndarray:
    """(units, images): the per-image `metric` of level b minus level a of `axis` in each unit, a fold
    (its runs averaged, over seeds and any other axes' settings) when `folded`, else a seed; the images
    and units both levels have. scores: analysis.paired.load_scores' rows (run_id, name, metric)."""
    from analysis.paired import FOLD

    unit = FOLD if folded else "seed"
    rows = scores[["run_id", "name", metric]].merge(runs[["run_id", axis, unit]], on="run_id")
    rows = rows[rows[axis].isin([a, b])]  # an image another level lacks stays in this comparison
    wide = rows.pivot_table(index=[axis, unit], columns="name", values=metric, aggfunc="mean").dropna(axis=1)
    return (wide.loc[b] - wide.loc[a]).dropna().to_numpy()


def _decide(metric: str, arms: tuple, per_unit: np.ndarray, delta: float, look: int, bar: float,
            last: bool) -> Decision:
    """The decision at one look (unit_tests at the level `bar`); `last`: the design's last look."""
    p_real, p_tost = (float(x[0]) for x in unit_tests(per_unit[None], delta))
    if p_real < bar:
        return Decision(metric, arms, "real", look, bar, p_real, p_tost, unit_interval(per_unit, bar))
    if p_tost < bar:
        return Decision(metric, arms, f"equivalent within ±{delta:g}", look, bar, p_tost, p_tost,
                        unit_interval(per_unit, 2 * bar))
    return Decision(metric, arms, "not shown" if last else "undecided", look, bar, p_real, p_tost,
                    unit_interval(per_unit, bar))


def replay(runs, axes: list[str], delta: float, max_blocks: int | None = None, uri: str | None = None,
           spending: Spending = "obrien_fleming", min_blocks: int = 2, blocks: list | None = None,
           per_block: int | None = None) -> Replay:
    """Take a recorded campaign's looks in block order, as a sequential campaign would have: at look k
    (k >= min_blocks blocks, each a cell of every arm) every comparison not yet decided (each level of
    the compared axis against the first, per headline metric) is tested on the runs of blocks 1..k
    with `unit_tests` at the level of the boundary spending alpha / family; decisions stay as made.

    `blocks`: the design's blocks in look order ((seed, fold) or (seed,) tuples), as the campaign spec
    lists them; default: those recorded, sorted. `per_block`: the cells of a block (arms x settings);
    default: the most runs any recorded block has. Look k needs blocks 1..k all complete: with workers a
    later block may finish first, and it waits for the earlier ones (looks are taken in block order).
    `max_blocks`: the planned design (default: the complete blocks recorded); no look goes past it."""
    from analysis.paired import FOLD, compare_axis, headline_metrics, load_scores

    axis = compare_axis(axes)
    folded = FOLD in runs and axis != FOLD and (runs[FOLD].nunique() > 1 or (blocks is not None
                                                                         and len(blocks[0]) == 2))
    keys = runs[["seed", FOLD] if folded else ["seed"]].apply(_block_key, axis=1)
    arms = runs.groupby(keys)["arm"].nunique()  # a block: one cell of every arm (in every setting)
    per_block = per_block or int(arms.max())
    order = [_block_key(b) for b in (blocks if blocks is not None else block_order(runs, folded))]
    complete = []
    for b in order[:max_blocks]:  # the complete prefix: a look never skips an unfinished block, nor counts an arm twice
        if arms.get(b, 0) < per_block:
            break
        complete.append(b)
    total = max_blocks or len(complete)
    looks = list(range(min_blocks, len(complete) + 1))
    scores = load_scores(runs, uri)
    metrics = headline_metrics(scores)
    levels_of = list(dict.fromkeys(runs[keys.isin(complete)][axis].dropna()))  # the matrix's order
    family = len(metrics) * (len(levels_of) - 1) if complete else 0
    levels = nominal_levels(np.array(looks) / total, ALPHA / max(family, 1), spending) if looks else []
    decided: dict[tuple, Decision] = {}
    pending: list[Decision] = []
    stop = looks[-1] if looks else 0
    for k, bar in zip(looks, levels):
        now, pending = runs[keys.isin(complete[:k])], []
        for m in metrics:
            for b in levels_of[1:]:
                if (m, b) not in decided:
                    d = _decide(m, (levels_of[0], b), unit_differences(now, scores, axis, levels_of[0], b, m, folded),
                                delta, k, float(bar), k == total)
                    if d.decided:
                        decided[(m, b)] = d
                    else:
                        pending.append(d)
        if family and len(decided) == family:
            stop = k
            break
    return Replay(list(decided.values()), stop, len(complete), per_block, family, tuple(pending), total)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Group-sequential campaigns: the error rates of the stopping rule by "
                                            "simulation (--simulate).")
    p.add_argument("--simulate", action="store_true", help="simulate headline-shaped campaigns (2 arms, 5 folds x "
                   "3 seeds, 200 images, a family of 2) and print the error rates and blocks used")
    p.add_argument("--n", type=int, default=2000, help="simulated campaigns per figure (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delta", type=float, help="equivalence margin and powered effect (default: with --replay the "
                   "campaign's declared sequential.delta, else 0.01)")
    p.add_argument("--spending", choices=["obrien_fleming", "pocock"], help="default: the campaign's, else "
                   "obrien_fleming")
    p.add_argument("--replay", nargs="+", metavar="CAMPAIGN", help="a recorded campaign's looks in block order: "
                   "where it would have stopped, its verdicts and the runs it would have saved")
    p.add_argument("--max-blocks", type=int, help="with --replay: the planned blocks (default: the campaign's "
                   "sequential.max_blocks, else the blocks recorded)")
    p.add_argument("--min-blocks", type=int, help="the first look (default: the campaign's, else 2)")
    p.add_argument("--look", metavar="CAMPAIGN", help="a sequential campaign's current look, as one JSON line "
                   "(what `harness campaign` reads between blocks)")
    p.add_argument("--blocks", help="with --look: the design's blocks in look order, as JSON ([[seed, fold], ...])")
    p.add_argument("--per-block", type=int, help="with --look: the cells of one block (arms x settings)")
    args = p.parse_args(argv)
    given = {k: getattr(args, k) for k in DEFAULTS}
    first = 2 if args.min_blocks is None else args.min_blocks
    if args.n < 1 or (args.delta is not None and args.delta <= 0) or first < 2 or (
            args.max_blocks is not None and args.max_blocks < first):
        p.error("--n >= 1, --delta > 0, --min-blocks >= 2 and --max-blocks >= --min-blocks")
    if args.replay:
        return _replay_main(args.replay, given)
    vars(args).update({k: DEFAULTS[k] if v is None else v for k, v in given.items()})
    if args.look:
        return _look_main(args)
    if not args.simulate:
        p.error("nothing to do: give --simulate or --replay CAMPAIGN")
    from analysis.sequential_simulation import print_simulation  # it builds on this module's rule

    print_simulation(args.n, args.seed, args.delta, args.spending)
    return 0


def _look_main(args) -> int:
    """One JSON line: {stop, look, decisions}; stop when every comparison is decided."""
    import json

    from analysis.runs import load_campaign

    try:
        runs, axes = load_campaign(args.look)
    except LookupError:  # no run has finished yet: no look
        print(json.dumps({"stop": False, "look": 0, "recorded": 0, "decisions": []}))
        return 0
    blocks = json.loads(args.blocks) if args.blocks else None
    r = replay(runs, axes, args.delta, args.max_blocks, spending=args.spending, min_blocks=args.min_blocks,
               blocks=blocks, per_block=args.per_block)
    print(json.dumps({"stop": r.stopped, "look": r.stop, "recorded": r.recorded,
                      "decisions": [{"metric": d.metric, "arms": [str(a) for a in d.arms], "verdict": d.verdict,
                                     "look": d.look, "level": d.level, "p": d.p, "interval": d.interval}
                                    for d in r.decisions],
                      "pending": [{"metric": d.metric, "arms": [str(a) for a in d.arms], "look": d.look,
                                   "verdict": d.text()} for d in r.pending]}))
    return 0


def recorded_design(runs) -> dict | None:
    """The sequential design a campaign's runs recorded (tag campaign.sequential: delta, block,
    max_blocks, min_blocks, spending), or None for a campaign that was not sequential."""
    import json

    tags = runs["campaign.sequential"].dropna() if "campaign.sequential" in runs else []
    return json.loads(tags.iloc[0]) if len(tags) else None


def _replay_main(campaigns: list[str], given: dict) -> int:
    """--replay: the campaign's recorded design where it has one, each option given overriding it."""
    from analysis.runs import load_campaign

    try:
        runs, axes = load_campaign(campaigns)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    recorded = recorded_design(runs) or {}
    o = {k: v if v is not None else recorded.get(k, DEFAULTS[k]) for k, v in given.items()}
    r = replay(runs, axes, o["delta"], o["max_blocks"], spending=o["spending"], min_blocks=o["min_blocks"])
    source = "the campaign's design" if recorded else "a fixed campaign"
    print(f"{' + '.join(campaigns)} ({source}): {r.recorded} complete blocks of {r.runs_per_block} runs recorded; "
          f"looks from {o['min_blocks']} ({o['spending']}, delta {o['delta']:g}, {r.planned} blocks planned, family "
          f"of {r.family})")
    for d in [*r.decisions, *r.pending]:
        print(f"  {d.metric}: {d.arms[1]} vs {d.arms[0]}: {d.text()}; interval {d.interval_text()}")
    if not r.stop:
        print(f"no look taken: a look needs {o['min_blocks']} complete blocks (a cell of every arm each)")
    elif r.stopped:
        print(f"every comparison decided at look {r.stop} of {r.planned}: {r.runs_saved} runs not needed")
    elif r.recorded >= r.planned:
        print(f"{len(r.pending)} comparison(s) undecided at the last look ({r.planned}): they read 'not shown'; "
              "no runs saved")
    else:
        print(f"{len(r.pending)} comparison(s) undecided at look {r.recorded} of {r.planned}: the campaign goes on")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
