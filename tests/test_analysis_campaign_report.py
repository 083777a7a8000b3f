"""Campaigns (matrix, skip finished cells, report failures) and the comparison report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.config.sweeps import load_campaign_spec
from harness.sweeps.campaign import run_campaign

from conftest import EXPERIMENTS, REPO, use_store

DEBUG_CAMPAIGN = EXPERIMENTS / "campaigns" / "debug_campaign.yaml"
TINY = {"model.base_width": 4, "data.synthetic_size": [32, 8]}  # for campaigns whose runs only feed a report


def debug_campaign(folder, name: str, matrix: dict, overrides: dict | None = None):
    """(spec, base) of a campaign over the debug spec: one epoch and no model export, then `overrides`."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": str(EXPERIMENTS / "debug.yaml"), "matrix": matrix,
                                    "set": {"train.epochs": 1, "log_model": False, **(overrides or {})}},
                                   sort_keys=False))  # the matrix order is the axes order
    return load_campaign_spec(path)


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "campaigns").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_campaigns_load(path):
    spec, base = load_campaign_spec(path)
    assert len(spec.cells()) >= 2 and base.is_file()


def test_shipped_campaigns_are_listed_in_the_readme():
    # docs/results.md's table of shipped campaigns is how a newcomer finds them: every file gets a row, and
    # the row's run count follows the file when its matrix grows.
    readme = (REPO / "docs" / "results.md").read_text()
    start = readme.index("Shipped in `experiments/campaigns/`")
    table = readme[start:readme.index("\n\n", readme.index("| campaign |", start))]
    rows = [r.split("|")[1:-1] for r in table.splitlines()
            if r.startswith("| `")]
    runs = {}
    for names, _, counts, _ in rows:
        names = [n.strip(" `") for n in names.split(",")]
        counts = [int(c) for c in counts.replace(" each", "").split(",")]  # "12 each" or "9, 6, 6"
        runs.update(zip(names, counts * len(names) if len(counts) == 1 else counts, strict=True))
    shipped = {p.stem: p for p in sorted((EXPERIMENTS / "campaigns").glob("*.yaml"))}
    assert sorted(runs) == sorted(shipped), "docs/results.md's campaign table and experiments/campaigns/ differ"
    wrong = {n: runs[n] for n, p in shipped.items() if len(load_campaign_spec(p)[0].cells()) != runs[n]}
    assert not wrong, f"run counts in docs/results.md's campaign table are wrong for {wrong}"


def test_unknown_matrix_field_is_a_spec_error(tmp_path):
    from harness.config.load import SpecError

    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\nbase: {EXPERIMENTS / 'debug.yaml'}\nmatrix:\n  model.archh: [unet]\n")
    with pytest.raises(SpecError, match=r"c\.yaml:4: matrix 'model.archh'"):
        load_campaign_spec(path)


@pytest.fixture(scope="module")
def campaign_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("campaign")
    mp = pytest.MonkeyPatch()
    use_store(tmp, mp)
    spec, base = load_campaign_spec(DEBUG_CAMPAIGN)
    first = run_campaign(spec, base)
    yield tmp, spec, base, first
    mp.undo()


def test_every_cell_is_a_tagged_finished_run(campaign_store):
    tmp, spec, _, results = campaign_store
    assert [r.status for r in results] == ["FINISHED"] * 4
    client = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id],
                              "tags.campaign = 'debug_campaign'")
    assert len(runs) == 4
    cells = {(r.data.tags["cell.model.arch"], r.data.tags["cell.seed"]) for r in runs}
    assert cells == {("unet", "0"), ("unet", "1"), ("resnet34_unet", "0"), ("resnet34_unet", "1")}
    assert all(r.data.params["model.arch"] == r.data.tags["cell.model.arch"] for r in runs)


def test_rerun_skips_finished_cells(campaign_store):
    _, spec, base, first = campaign_store
    again = run_campaign(spec, base)
    assert [r.status for r in again] == ["SKIPPED"] * 4
    assert [r.run_id for r in again] == [r.run_id for r in first]


def test_failed_cell_is_reported_and_others_finish(store, tmp_path):
    spec, base = debug_campaign(tmp_path, "partly_broken", {"data.dataset": ["synthetic", "folder"]},
                                {"data.root": str(tmp_path / "nowhere")})
    results = run_campaign(spec, base)
    assert [r.status for r in results] == ["FINISHED", "FAILED"]
    assert "nowhere" in results[1].error


def test_report_compares_arms_and_is_logged(campaign_store, capsys):
    from analysis.report import build_report, main
    from analysis.runs import load_campaign, load_per_image
    from analysis.stats import paired_comparison

    tmp, _, _, _ = campaign_store
    report = build_report(campaign="debug_campaign")
    page = report.html
    for text in ("Conclusion", "Wilcoxon signed-rank p", "Summary per arm", "Learning curves",
                 "Paired per-image comparison", "Time to Dice", "not_background", "data:image/png;base64"):
        assert text in page, text
    # The conclusion's numbers are the paired statistics of the per-image CSVs.
    runs, _ = load_campaign("debug_campaign")
    per = {arch: np.mean([load_per_image(r).dice.to_numpy() for r in runs[runs["model.arch"] == arch].run_id], axis=0)
           for arch in ("unet", "resnet34_unet")}
    result = paired_comparison(per["unet"], per["resnet34_unet"])
    assert f"by {abs(result.mean_diff):.4f}" in page
    assert "<b>resnet34_unet</b> is" in page  # matrix order: unet is the baseline A
    assert "seed_ci_low" in page  # two seeds per arm: the CI over runs and images is in the table
    assert "Tested on: synthetic-test (" in page  # each run's test dataset input, name and digest

    assert main(["--campaign", "debug_campaign", "--out", str(tmp / "r.html")]) == 0
    printed = capsys.readouterr().out  # the verdict reaches the terminal, in plain text
    assert f"by {abs(result.mean_diff):.4f}" in printed and "resnet34_unet is" in printed
    assert "<" not in report.text() and report.text().splitlines()[0] in printed
    client = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    reports = client.search_runs([client.get_experiment_by_name("debug").experiment_id], "tags.`run.kind` = 'report'")
    assert len(reports) == 1 and "r.html" in {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert len(load_campaign("debug_campaign")[0]) == 4  # the report run is not a campaign cell
    folder = tmp / "reports"  # --out may name a folder: the report is written into it under the campaign's name
    folder.mkdir()
    assert main(["--campaign", "debug_campaign", "--out", str(folder), "--no-log"]) == 0
    assert (folder / "debug_campaign.html").is_file()
    # --axis must name a varied field: exit 2, naming the ones there are, and nothing written
    assert main(["--campaign", "debug_campaign", "--axis", "train.lr", "--out", str(folder), "--no-log"]) == 2
    assert "'train.lr' is not varied by this campaign; choose one of: model.arch" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["debug_campaign.html"]


@pytest.mark.slow  # 32 s on 2 cores: two campaigns pooled; single-campaign report tests stay in the default suite
def test_campaigns_pool_into_one_report_over_the_param_they_differ_in(store, tmp_path):
    from analysis.report import build_report, main
    from analysis.runs import load_campaign

    def campaign(name, lr, seeds, archs=("unet", "resnet34_unet")):
        spec = debug_campaign(tmp_path, name, {"model.arch": list(archs), "seed": seeds}, {"train.lr": lr, **TINY})
        assert {r.status for r in run_campaign(*spec)} == {"FINISHED"}

    campaign("slow", 0.001, [0, 1])
    campaign("fast", 0.01, [0])
    campaign("slow_more", 0.001, [1, 2], archs=("unet",))  # unet seed 1 repeats a cell of `slow`
    runs, axes = load_campaign(["slow", "fast"])
    assert axes == ["train.lr", "model.arch", "seed"] and len(runs) == 6
    assert list(runs.groupby("campaign", sort=False)["train.lr"].first().items()) == [("slow", 0.001), ("fast", 0.01)]
    page = build_report(campaign=["slow", "fast"]).html
    for text in ("Campaigns slow + fast", "Under which settings (model.arch within each setting)",
                 "With train.lr=0.001: resnet34_unet", "mean over train.lr=0.001; train.lr=0.01"):
        assert text in page, text
    # No param differs: the seeds are pooled, and the cell both ran is counted once (the first named campaign's)
    runs, axes = load_campaign(["slow", "slow_more"])
    assert axes == ["model.arch", "seed"] and len(runs) == 5
    assert sorted(runs[runs["model.arch"] == "unet"].seed) == [0, 1, 2]
    assert set(runs[runs.seed == 1].campaign) == {"slow"}
    # The same spec trained in another precision (`amp: auto` on a machine with or without native bf16)
    # is another setting: the autocast dtype becomes the leading axis and no cell is dropped as a repeat
    client = MlflowClient(store)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.campaign = 'slow_more'"):
        other = "bfloat16" if run.data.tags["amp.dtype"] != "bfloat16" else "float32"
        client.set_tag(run.info.run_id, "amp.dtype", other)
    runs, axes = load_campaign(["slow", "slow_more"])
    assert axes == ["amp.dtype", "model.arch", "seed"] and len(runs) == 6
    assert runs.groupby("campaign")["amp.dtype"].nunique().to_dict() == {"slow": 1, "slow_more": 1}
    with pytest.raises(LookupError, match="no FINISHED runs for campaign 'nope'"):
        load_campaign(["slow", "nope"])
    assert main(["--campaign", "slow", "fast", "--out", str(tmp_path), "--no-log"]) == 0
    assert (tmp_path / "slow+fast.html").is_file()


def test_overview_tabulates_every_campaign(campaign_store, capsys):
    from analysis.overview import main
    from analysis.report import build_report

    tmp, _, _, _ = campaign_store
    assert main(["--out", str(tmp / "ov")]) == 0
    table = pd.read_csv(tmp / "ov.csv")
    # debug_campaign: unet against resnet34_unet, one setting, per headline metric; the report's numbers
    assert list(table.campaign) == ["debug_campaign"] * 2 and list(table.B) == ["resnet34_unet"] * 2
    assert list(table.metric) == ["Dice", "NSD"] and set(table.family_size) == {2}  # one family: both metrics
    page = build_report(campaign="debug_campaign").html
    assert f"by {abs(table['diff'][0]):.4f}" in page and f"by {abs(table['diff'][1]):.4f}" in page
    assert (table.runs_a[0], table.runs_b[0]) == (2, 2) and table.seed_ci_low[0] <= table["diff"][0]
    assert (tmp / "ov.md").read_text().splitlines()[2].startswith("| debug_campaign | model.arch | Dice |")
    assert "| debug_campaign |" in capsys.readouterr().out
    # An unknown campaign: exit 2, naming the ones there are
    assert main(["--campaign", "nope", "--out", str(tmp / "ov2")]) == 2
    assert "campaign(s) nope" in capsys.readouterr().err and not (tmp / "ov2.csv").exists()


def test_every_table_gives_an_arm_the_same_interval(campaign_store):
    """make overview, the report's summary and its sections (and the notebooks, which print the
    report's summary_table) give each arm one interval: stats.summarize_arm, a t below FEW_RUNS runs."""
    from analysis.overview import overview_table, readable
    from analysis.report import summary_table
    from analysis.runs import load_campaign
    from analysis.sections import _fmt_ci
    from analysis.stats import summarize_arm

    runs, _ = load_campaign("debug_campaign")
    summary = summary_table(runs).set_index("arm")["test/dice"]
    table = readable(overview_table(["debug_campaign"]))
    dice = table[table.metric == "Dice"].iloc[0]
    for arm, shown in (("unet", dice["test score A"]), ("resnet34_unet", dice["test score B"])):
        values = runs.loc[runs["model.arch"] == arm, "test/dice"]
        expected = summarize_arm(values)
        assert expected.interval.method == "t over run means" and expected.n_runs == 2
        assert shown == expected.text() == _fmt_ci(values) == summary[arm].removesuffix(" t")


def test_the_report_renders_its_verdicts_from_the_result_objects(campaign_store):
    """The page's Conclusion and the terminal text are the same Conclusion objects, rendered twice."""
    from analysis.report import build_report, verdict

    report = build_report(campaign="debug_campaign")
    assert [c.comparison.metric for c in report.conclusions] == ["dice", "nsd"]
    for c in report.conclusions:
        assert f"<p>{c.html()}</p>" in report.html
        assert c.comparison.family_size == 2  # Holm over both metrics
        assert c.text().endswith(verdict(c.comparison))  # the verdict sentence closes the conclusion
    first = report.conclusions[0]
    assert report.text().splitlines()[0] == first.text()
    assert "<" not in report.text() and "&" not in report.text()
    assert first.text().startswith(f"Dice: resnet34_unet is {'higher' if first.comparison.mean_diff > 0 else 'lower'}")
    assert first.comparison.improvement is not None and "beats unet on" in first.text()  # per image, with its CI
    for section in ("<h2>Conclusion</h2>", "<h2>Summary per arm</h2>", "<h2>Learning curves</h2>",
                    "<h2>Paired per-image comparison (model.arch)</h2>",
                    "<h2>Worst test images per arm (model.arch)</h2>",
                    "<h2>Time to Dice</h2>", "<h2>Runs</h2>", "<h2>How many runs this comparison needs</h2>"):
        assert section in report.html, section


def test_plan_prints_the_designs_and_writes_its_power_curves(campaign_store, capsys):
    from analysis.plan import main

    tmp, _, _, _ = campaign_store
    assert main(["--campaign", "debug_campaign", "--delta", "0.05", "--out", str(tmp / "plan")]) == 0
    printed = capsys.readouterr().out
    assert "### Dice: resnet34_unet - unet" in printed and "### NSD: resnet34_unet - unet" in printed
    assert "| current: 2 seeds, 16 images (4 runs) | 4 |" in printed and "Equivalence within +-0.05" in printed
    assert (tmp / "plan.md").read_text().strip() == printed.split("\nwrote ")[0].strip()
    assert (tmp / "plan.png").stat().st_size > 0
    assert main(["--campaign", "nope", "--out", str(tmp / "plan2")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp / "plan2.md").exists()


def test_a_recorded_campaign_replays_look_by_look(campaign_store, capsys):
    from analysis.runs import load_campaign
    from analysis.sequential import main, replay

    runs, axes = load_campaign("debug_campaign")
    r = replay(runs, axes, delta=1.0)  # two seeds: two blocks of 2 runs, one look; Dice lies within +-1
    assert (r.recorded, r.runs_per_block, r.family, r.stop) == (2, 2, 2, 2) and r.runs_saved == 0
    assert all(d.look == 2 and d.p < d.level for d in r.decisions)
    assert all(d.verdict in ("real", "equivalent within ±1") for d in r.decisions)
    assert main(["--replay", "debug_campaign", "--delta", "1"]) == 0
    assert "2 complete blocks of 2 runs recorded" in capsys.readouterr().out
    assert main(["--replay", "nope"]) == 2
    # Planned for 40 blocks, look 2 spends almost nothing: every comparison stays undecided, and says
    # so with its p for "real" and for equivalence, and the boundary it did not clear.
    early = replay(runs, axes, delta=1e-6, max_blocks=40)
    assert early.decisions == [] and len(early.pending) == early.family == 2 and not early.stopped
    assert all(d.verdict == "undecided" and d.look == 2 and d.p >= d.level for d in early.pending)
    assert main(["--replay", "debug_campaign", "--delta", "1e-6", "--max-blocks", "40"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("undecided at look 2 (p ") == 2 and "for equivalence; boundary " in printed
    # at the design's last look (2 of 2 here) an undecided comparison reads "not shown"
    final = replay(runs, axes, delta=1e-6)
    assert final.pending and all(d.verdict == "not shown" and d.look == 2 for d in final.pending)
    assert not final.stopped and final.runs_saved == 0
    # Looks go in block order: with block (0,) not finished, block (1,) alone allows no look (a later
    # block may finish first with workers), and a block missing an arm is not complete.
    waiting = replay(runs, axes, delta=1.0, blocks=[(7,), *sorted({(s,) for s in runs["seed"]})])
    assert (waiting.recorded, waiting.decisions, waiting.stopped) == (0, [], False)
    from analysis.paired import compare_axis

    arm = compare_axis(axes)
    one_arm = runs[runs[arm] == runs[arm].iloc[0]]
    assert not replay(one_arm, axes, delta=1.0, per_block=2).stopped  # never "every comparison" of none
    assert replay(one_arm, axes, delta=1.0, per_block=2).recorded == 0


def test_stats_on_known_data():
    from analysis.stats import bootstrap_ci, paired_comparison

    mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and 1.0 <= low < 2.5 < high <= 4.0
    a = np.linspace(0.5, 0.9, 40)
    result = paired_comparison(a, a + 0.05)
    assert result.mean_diff == pytest.approx(0.05) and result.p_wilcoxon < 1e-6
    assert result.rank_biserial == 1.0 and result.b_better == 40
    same = paired_comparison(a, a)
    assert same.p_wilcoxon == 1.0 and same.mean_diff == 0.0
    rounded_a = (a * 3 + 0.1 - 0.1) / 3  # the same scores after float rounding
    assert np.any(a != rounded_a)  # (else the next line tests nothing)
    rounding = paired_comparison(a, rounded_a)
    assert rounding.b_better == rounding.a_better == 0 and rounding.p_wilcoxon == 1.0


def test_seed_and_image_ci_counts_run_to_run_variation():
    from dataclasses import replace

    from analysis.report import verdict
    from analysis.results import Interval
    from analysis.stats import paired_comparison, seed_and_image_ci

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.6, 0.95, 200)
    a = truth + rng.normal(0, 0.02, (3, 200))
    # B is 0.01 better on average, but its three training runs land 0.04 apart from each other.
    lucky = truth + 0.01 + rng.normal(0, 0.02, (3, 200)) + np.array([[0.04], [-0.04], [0.0]])
    steady = truth + 0.01 + rng.normal(0, 0.02, (3, 200))
    for b, seeds_agree in ((lucky, False), (steady, True)):
        result = paired_comparison(a.mean(axis=0), b.mean(axis=0))
        assert result.images_interval.low > 0 and result.p_wilcoxon < 0.05  # over images alone: "significant"
        mean, low, high = seed_and_image_ci(a, b)
        assert mean == pytest.approx(result.mean_diff) and low < mean < high
        assert (low > 0) is seeds_agree
        assert high - low > 2 * result.images_interval.half_width  # never narrower than the image-only CI
        text = verdict(replace(result, runs_interval=Interval(low, high, "bootstrap over runs and images")))
        assert ("run more seeds" in text) is not seeds_agree and ("also counting seed-to-seed" in text) is seeds_agree
    one_run = seed_and_image_ci(a[:1], a[:1] + 0.01)
    assert one_run[0] == pytest.approx(0.01) and one_run[1] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="same images"):
        seed_and_image_ci(a, a[:, :10])


def test_arms_are_compared_within_each_setting_and_gap_changes_are_tested():
    from analysis import plots
    from analysis.paired import Paired
    from analysis.sections import by_setting, setting_tables
    from analysis.stats import compare_arms, compare_gaps

    rng = np.random.default_rng(1)
    truth = rng.uniform(0.6, 0.95, 300)

    def cell(shift):  # three training runs of one (setting, arm) cell
        return truth + shift + rng.normal(0, 0.01, (3, 300))

    # B beats A by 0.03 without augmentation and ties with it under crop, which lifts both arms by 0.10.
    cells = {("augment=none", "a"): cell(0), ("augment=none", "b"): cell(0.03),
             ("augment=crop", "a"): cell(0.10), ("augment=crop", "b"): cell(0.10)}
    gap = compare_gaps(*(cells[k] for k in [("augment=none", "a"), ("augment=none", "b"),
                                            ("augment=crop", "a"), ("augment=crop", "b")]))
    assert gap.mean_diff == pytest.approx(-0.03, abs=0.005) and gap.runs_interval.high < 0 and gap.evidence == "real"
    same = compare_gaps(cells[("augment=none", "a")], cells[("augment=none", "b")],
                        cells[("augment=crop", "a")], cells[("augment=crop", "a")] + 0.03)
    assert same.runs_interval.low < 0 < same.runs_interval.high and same.evidence != "real"

    # Stratified: runs are resampled within their setting, so the 0.10 between settings is not seed noise.
    a = [cells[("augment=none", "a")], cells[("augment=crop", "a")]]
    b = [cells[("augment=none", "b")], cells[("augment=crop", "b")]]
    strat, pooled = compare_arms(a, b), compare_arms(np.vstack(a), np.vstack(b))
    assert strat.mean_diff == pytest.approx(pooled.mean_diff) == pytest.approx(0.015, abs=0.003)
    assert strat.runs_interval.half_width < pooled.runs_interval.half_width / 2
    with pytest.raises(ValueError, match="different settings"):
        compare_arms(a, b[:1])

    paired = Paired(wide=None, levels=["a", "b"], settings=["augment=none", "augment=crop"], cells=cells)
    lines, parts = by_setting(paired, "model.arch", lambda fig: plots.plt.close(fig) or "<img>")
    assert lines[0].startswith("Dice: With augment=none: b &minus; a = +0.03") and lines[0].endswith(": real.")
    assert lines[1].startswith("Dice: With augment=crop:") and lines[1].endswith("no difference shown.")
    assert lines[2].startswith("Dice: The b &minus; a gap changes from augment=none to augment=crop: -0.03")
    assert "Does the gap change" in "".join(parts)
    # the probability of improvement per image, beside each comparison within a setting
    within = setting_tables(paired)[0]
    assert within["p_improvement"].iloc[0] > 0.95 and 0.3 < within["p_improvement"].iloc[1] < 0.7
    assert all("(probability of improvement per image, ties half): " in line for line in lines[:2]), lines[:2]


def _execute_notebook(path, tmp, env, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(path)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp)}})
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    return nb, images


@pytest.mark.slow
def test_notebooks_run_end_to_end(campaign_store, monkeypatch):
    from harness.config.sweeps import load_study_spec
    from harness.sweeps.study import run_study

    tmp, _, _, _ = campaign_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    monkeypatch.chdir(tmp)
    study_spec = EXPERIMENTS / "studies" / "debug_study.yaml"
    spec, base = load_study_spec(study_spec)
    run_study(spec, base, study_spec)
    notebooks = EXPERIMENTS.parent / "analysis" / "notebooks"
    _, images = _execute_notebook(notebooks / "compare_architectures.py", tmp, {"CAMPAIGN": "debug_campaign"},
                                  monkeypatch)
    assert len(images) >= 3  # learning curves, paired scatter, time to Dice
    nb, images = _execute_notebook(notebooks / "study_analysis.py", tmp, {"STUDY": "debug_study"}, monkeypatch)
    assert len(images) >= 2  # history, pruned vs complete curves
    first_output = nb.cells[2]["outputs"][0]["data"]["text/plain"]
    assert "COMPLETE" in first_output or "PRUNED" in first_output


def test_interrupted_cell_resumes_its_run(store, tmp_path, monkeypatch):
    from harness.run import run_experiment as real_run
    from harness.sweeps import campaign as campaign_module

    spec, base = debug_campaign(tmp_path, "resumable", {"seed": [0]}, {"train.epochs": 3})

    def crash_after_epoch_1(exp, make_tracker, **kwargs):
        def on_epoch(epoch, metrics):
            if epoch == 1:
                raise KeyboardInterrupt("simulated Ctrl-C")
        return real_run(exp, make_tracker, on_epoch=on_epoch)

    monkeypatch.setattr(campaign_module, "run_experiment", crash_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_campaign(spec, base)
    monkeypatch.setattr(campaign_module, "run_experiment", real_run)
    (planned,) = run_campaign(spec, base, dry_run=True)
    (killed,) = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("debug").experiment_id])
    assert (planned.status, planned.run_id) == ("TO RESUME", killed.info.run_id) and killed.info.status == "KILLED"
    (result,) = run_campaign(spec, base)
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == result.run_id and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_from_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(result.run_id, "val/dice")] == [1, 2, 3]


def test_predictions_artifact_matches_per_image_scores(campaign_store):
    from analysis.runs import load_campaign, load_per_image, load_predictions

    runs, _ = load_campaign("debug_campaign")
    run_id = runs.run_id.iloc[0]
    pred, csv = load_predictions(run_id), load_per_image(run_id)
    assert pred["names"] == list(csv.name)
    tp = (pred["pred"] & pred["truth"]).sum((1, 2))
    fp = (pred["pred"] & ~pred["truth"]).sum((1, 2))
    fn = (~pred["pred"] & pred["truth"]).sum((1, 2))
    assert list(tp) == list(csv.tp) and list(fp) == list(csv.fp) and list(fn) == list(csv.fn)
    assert pred["worst"] == list(np.argsort(csv.dice.to_numpy(), kind="stable")[: len(pred["worst"])])
    assert pred["worst_images"].shape[1:] == (*pred["pred"].shape[1:], 3)


def test_report_sections_for_loss_and_augmentation_axes(store, tmp_path):
    from analysis.report import build_report

    spec, base = debug_campaign(tmp_path, "loss_aug", {"train.loss": ["bce", "bce_with_logits"],
                                                       "augment": ["none", "flip"], "seed": [0]}, TINY)
    assert [r.status for r in run_campaign(spec, base)] == ["FINISHED"] * 4
    page = build_report(campaign="loss_aug").html
    for text in ("BCE on sigmoid vs BCEWithLogits", "skipped non-finite batches", "Ablation over augment",
                 "Ablation over train.loss", "Every level against <b>bce</b>",
                 "Every level against <b>none</b>", "Worst test images per arm (train.loss)",
                 "Under which settings (train.loss within each setting): Dice",
                 "Under which settings (train.loss within each setting): NSD", "With augment=none: bce_with_logits",
                 "mean over augment=none; augment=flip"):
        assert text in page, text
    from analysis.overview import campaign_rows  # pooled, each setting, then the change of the gap
    rows = campaign_rows("loss_aug")
    assert [r["setting"] for r in rows] == ["pooled over 2 settings", "augment=none", "augment=flip",
                                            "change of the gap: augment=none -> augment=flip"] * 2
    assert [r["metric"] for r in rows] == ["Dice"] * 4 + ["NSD"] * 4 and {r["family_size"] for r in rows} == {8}
    assert all(np.isnan(r["seed_ci_low"]) for r in rows)  # one seed per cell: no CI over runs
    from analysis.overview import readable
    assert list(readable(pd.DataFrame(rows))["CI over runs and images"]) == (["one run in an arm"] * 3
                                                                            + ["one run in a cell"]) * 2
    # The other view of the same runs: augmentation compared within each loss
    page = build_report(campaign="loss_aug", axis="augment").html
    for text in ("compared: <b>augment</b>", "Under which settings (augment within each setting)",
                 "With train.loss=bce: flip", "mean over train.loss=bce; train.loss=bce_with_logits"):
        assert text in page, text


@pytest.mark.slow  # 28 s on 2 cores: two campaigns with failing cells
def test_pooled_loss_report_counts_each_campaigns_failed_runs(store, tmp_path, monkeypatch):
    """A campaign without failures must not hide another's: the loss section loads FAILED runs per campaign."""
    import re

    import torch

    import harness.build as parts_module
    from analysis.report import build_report

    def campaign(name):
        return [r.status for r in run_campaign(*debug_campaign(
            tmp_path, name, {"train.loss": ["bce", "bce_with_logits"], "seed": [0]}, TINY))]

    assert campaign("clean") == ["FINISHED"] * 2
    real = parts_module.get_loss  # from here on `bce` gives a NaN loss: its run fails (train.on_nan: fail)
    monkeypatch.setattr(parts_module, "get_loss", lambda name, **kw: (lambda logits, target: real(name, **kw)(
        logits, target) * (torch.nan if name == "bce" else 1)))
    assert campaign("broken") == ["FAILED", "FINISHED"]
    for names, expected in ((["clean"], 0), (["clean", "broken"], 1), (["broken", "clean"], 1)):
        page = build_report(campaign=names).html
        section = page[page.index("BCE on sigmoid vs BCEWithLogits"):]
        table = section[:section.index("</table>")]
        header = re.findall(r"<th>(.*?)</th>", table)
        rows = [re.findall(r"<td>(.*?)</td>", row) for row in table.split("<tbody>")[1].split("<tr>")[1:]]
        failed = {row[0]: int(row[header.index("failed runs")]) for row in rows}
        assert failed == {"bce": expected, "bce_with_logits": 0}, (names, failed)


@pytest.mark.slow  # 20 s on 2 cores: a campaign run twice, in two precisions
def test_a_cell_finished_in_another_precision_runs_again_and_is_compared_apart(store, tmp_path, capsys):
    # A campaign begun where `amp: auto` is bf16 and continued where it is float32 (or the reverse):
    # the spec hash is the same, but a run in the other precision is not this cell's result.
    from analysis.report import build_report
    from analysis.runs import load_campaign

    spec, base = debug_campaign(tmp_path, "precisions", {"model.arch": ["unet", "resnet34_unet"]}, TINY)
    first = run_campaign(spec, base)
    client = MlflowClient(store)
    here = client.get_run(first[0].run_id).data.tags["amp.dtype"]
    other = "bfloat16" if here != "bfloat16" else "float32"
    for result in first:
        client.set_tag(result.run_id, "amp.dtype", other)
    capsys.readouterr()
    planned = run_campaign(spec, base, dry_run=True)  # what a campaign continued here would do, first
    assert [r.status for r in planned] == ["TO RUN", "TO RUN"]
    assert f"run {first[0].run_id} finished it with amp.dtype {other} (now {here})" in capsys.readouterr().out
    assert len(client.search_runs([client.get_experiment_by_name("debug").experiment_id])) == 2  # nothing trained
    again = run_campaign(spec, base)
    assert [r.status for r in again] == ["FINISHED", "FINISHED"]
    assert not {r.run_id for r in again} & {r.run_id for r in first}
    assert f"run {first[0].run_id} finished it with amp.dtype {other} (now {here})" in capsys.readouterr().out
    assert [r.status for r in run_campaign(spec, base)] == ["SKIPPED", "SKIPPED"]  # now done in this precision

    runs, axes = load_campaign("precisions")
    assert axes[0] == "amp.dtype" and len(runs) == 4
    assert runs.groupby("amp.dtype")["model.arch"].apply(sorted).to_dict() == {
        here: ["resnet34_unet", "unet"], other: ["resnet34_unet", "unet"]}
    assert runs["arm"].nunique() == 4  # never two precisions as seeds of one arm
    page = build_report("precisions", loaded=(runs, axes)).html
    assert "Mixed precision" in page and f"2 with {here}" in page and f"2 with {other}" in page


def test_precision_is_an_axis_unless_a_train_amp_axis_decides_it():
    from analysis.runs import _unexplained_tags

    def raw(amp, dtypes):
        return pd.DataFrame({"params.train.amp": amp, "params.model.arch": ["unet", "resnet34_unet"] * 2,
                             "tags.amp.dtype": dtypes})

    one_machine = raw(["auto"] * 4, ["float32"] * 4)
    assert _unexplained_tags(one_machine, ["model.arch", "seed"]) == []
    two_machines = raw(["auto"] * 4, ["bfloat16", "bfloat16", "float32", "float32"])
    assert _unexplained_tags(two_machines, ["model.arch", "seed"]) == ["amp.dtype"]
    # The arms split by machine (UNet on one, ResNet34-UNet on the other): still an axis, so the
    # architecture comparison finds no setting with both, rather than comparing precisions.
    by_arch = raw(["auto"] * 4, ["bfloat16", "float32"] * 2)
    assert _unexplained_tags(by_arch, ["model.arch", "seed"]) == ["amp.dtype"]
    # A campaign over train.amp compares precisions on purpose: its levels decide the dtype.
    over_amp = raw(["off", "off", "bf16", "bf16"], ["float32", "float32", "bfloat16", "bfloat16"])
    assert _unexplained_tags(over_amp, ["train.amp", "model.arch", "seed"]) == []
    # ... unless its `auto` level itself ran on two kinds of machine.
    auto_mixed = raw(["off", "off", "auto", "auto"], ["float32", "float32", "bfloat16", "float32"])
    assert _unexplained_tags(auto_mixed, ["train.amp", "model.arch", "seed"]) == ["amp.dtype"]
    legacy = raw(["auto"] * 4, [None, "float32", "bfloat16", "bfloat16"])  # one run predates the tag
    assert _unexplained_tags(legacy, ["model.arch", "seed"]) == ["amp.dtype"]
    assert list(legacy["tags.amp.dtype"]) == ["unrecorded", "float32", "bfloat16", "bfloat16"]


def test_data_version_is_an_axis_unless_a_data_axis_decides_it():
    from analysis.runs import _unexplained_tags

    def raw(sizes, prints, dtypes=("float32",) * 4):
        return pd.DataFrame({"params.data.image_size": sizes, "params.model.arch": ["unet", "resnet34_unet"] * 2,
                             "tags.data.fingerprint": prints, "tags.amp.dtype": list(dtypes)})

    assert _unexplained_tags(raw(["128"] * 4, ["a"] * 4), ["model.arch", "seed"]) == []
    # Files edited between the seeds: two versions of the data under one spec.
    edited = raw(["128"] * 4, ["a", "a", "b", "b"])
    assert _unexplained_tags(edited, ["model.arch", "seed"]) == ["data.fingerprint"]
    # The image size is in the fingerprint: a campaign over it has one fingerprint per level.
    over_size = raw(["96", "96", "128", "128"], ["a", "a", "b", "b"])
    assert _unexplained_tags(over_size, ["data.image_size", "model.arch", "seed"]) == []
    both = raw(["128"] * 4, ["a", "b"] * 2, ["bfloat16", "bfloat16", "float32", "float32"])
    assert _unexplained_tags(both, ["model.arch", "seed"]) == ["amp.dtype", "data.fingerprint"]


@pytest.mark.slow  # 8 s on 2 cores: a campaign run twice, on two data sets
def test_a_cell_finished_on_other_data_runs_again_and_is_compared_apart(store, tmp_path, capsys):
    # A mask fixed (or an image replaced) after a campaign ran: the spec is the same, the data is not.
    from analysis.runs import load_campaign
    from harness.build import cached_data

    from conftest import write_pet_layout

    root = write_pet_layout(tmp_path / "pet", [f"pet_{i}" for i in range(10)], n_test=2, size=(32, 32))
    spec, base = debug_campaign(tmp_path, "data_versions", {"seed": [0, 1]},
                                {"data.dataset": "oxford_pet", "data.root": str(root), "data.val_fraction": 0.25})
    first = run_campaign(spec, base)
    (root / "images" / "pet_3.jpg").write_bytes((root / "images" / "pet_4.jpg").read_bytes())
    cached_data.cache_clear()  # the decoded data is memoised per process; the user's command is a new one
    capsys.readouterr()
    again = run_campaign(spec, base)
    assert [r.status for r in again] == ["FINISHED", "FINISHED"]
    old_fp = MlflowClient(store).get_run(first[0].run_id).data.tags["data.fingerprint"]
    assert f"run {first[0].run_id} finished it with data.fingerprint {old_fp} (now " in capsys.readouterr().out
    assert [r.status for r in run_campaign(spec, base)] == ["SKIPPED", "SKIPPED"]
    runs, axes = load_campaign("data_versions")
    assert axes == ["data.fingerprint", "seed"] and runs.groupby("data.fingerprint").size().tolist() == [2, 2]


def test_a_cell_finished_twice_counts_once_and_the_extra_is_listed(store, tmp_path, capsys):
    """A worker that woke up late finished a cell another had finished: the store holds two FINISHED runs
    of it. The report, the overview and the notebooks (load_campaign) count the first to finish, once,
    and the report lists the other; it is never a second seed."""
    from analysis.overview import overview_table
    from analysis.report import build_report, main
    from analysis.runs import load_campaign

    spec, base = debug_campaign(tmp_path, "twice", {"model.arch": ["unet", "resnet34_unet"], "seed": [0, 1]}, TINY)
    assert [r.status for r in run_campaign(spec, base)] == ["FINISHED"] * 4
    client = MlflowClient()
    first = client.search_runs([client.get_experiment_by_name("debug").experiment_id],
                               "tags.campaign = 'twice' and tags.`cell.model.arch` = 'resnet34_unet'")[0]
    copy = client.create_run(first.info.experiment_id, tags=first.data.tags)
    for key, value in first.data.params.items():
        client.log_param(copy.info.run_id, key, value)
    for key, value in first.data.metrics.items():
        client.log_metric(copy.info.run_id, key, value)
    client.log_artifact(copy.info.run_id, client.download_artifacts(first.info.run_id, "test_per_image.csv",
                                                                   str(tmp_path)))
    client.set_terminated(copy.info.run_id, "FINISHED")
    runs, _ = load_campaign("twice")
    assert len(runs) == 4 and copy.info.run_id not in set(runs.run_id)
    assert runs.attrs["extra_runs"] == [{"run_id": copy.info.run_id, "cell": first.data.tags["campaign.cell"],
                                         "counted": first.info.run_id}]
    page = build_report(campaign="twice").html
    assert "runs not counted" in page and copy.info.run_id in page and "2 seed(s) per arm" in page
    assert set(overview_table(["twice"]).runs_b.dropna()) == {2}
    assert main(["--campaign", "twice", "--out", str(tmp_path / "r.html"), "--no-log"]) == 0
    assert "1 extra FINISHED run(s) of a cell not counted" in capsys.readouterr().err
