"""The house's rules, read from the source: which part may import which, and that every catalog
name has its implementation (and the reverse). See README, "Layout" and "Extending"."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

# Higher parts may import lower ones, never the reverse (paths, progress: anyone).
LEVELS = {"cli": 7, "__main__": 7, "commands": 7,
          "sweeps": 6, "run": 5, "tools": 5, "outputs": 4, "build": 4, "tracking": 3,
          "models": 3, "losses": 3, "engine": 2, "config": 2, "metrics": 1, "boundary": 1, "data": 1, "augment": 1,
          "figures": 1, "paths": 0, "progress": 0,
          "__init__": 0}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from harness import run`
    return found


def _part(module: str) -> str:
    """harness.engine.loop -> engine; harness.run -> run."""
    return module.split(".")[1]


def _harness_files():
    return sorted((REPO / "harness").rglob("*.py"))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def test_analysis_never_imports_harness():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.split(".")[0] == "harness")
                 for p in (REPO / "analysis").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package, owners", [("mlflow", ("harness/tracking/mlflow/",)),
                                             ("optuna", ("harness/sweeps/study/", "harness/sweeps/queue.py"))])
def test_one_module_per_outside_system(package, owners):
    """mlflow is one package (tracker, runs, models), optuna one (storage, objective, driver, summary)
    and the campaign queue."""
    importers = sorted(str(p.relative_to(REPO)) for p in _harness_files()
                       if any(m.split(".")[0] == package for m in _imports(p)))
    assert importers and all(any(i == owner or (owner.endswith("/") and i.startswith(owner)) for owner in owners)
                             for i in importers), importers


def test_no_part_imports_a_higher_one():
    wrong = []
    for path in _harness_files():
        here = _module(path)
        if here == "harness.__init__":
            continue
        level = LEVELS[_part(here)]
        for name in _imports(path):
            if name.startswith("harness.") and name.split(".")[1] in LEVELS and _part(name) != _part(here) \
                    and LEVELS[_part(name)] > level:
                wrong.append(f"{here} imports {name}")
    assert sorted(set(wrong)) == []


def test_components_import_no_config_engine_tracking_or_sweeps():
    components = ("models", "data", "losses", "metrics", "boundary", "augment")
    forbidden = ("config", "engine", "tracking", "sweeps")
    wrong = [f"{_module(p)} imports {m}" for p in _harness_files() if _part(_module(p)) in components
             for m in _imports(p) if m.startswith("harness.") and _part(m) in forbidden]
    assert wrong == []


def test_engine_imports_no_config_build_or_run():
    wrong = [f"{_module(p)} imports {m}" for p in _harness_files() if _part(_module(p)) == "engine"
             for m in _imports(p) if m.startswith("harness.") and _part(m) in ("config", "build", "run")]
    assert wrong == []


# ----------------------------------------------------------------------------- catalog contracts


def test_every_catalog_name_has_its_implementation():
    from harness import build
    from harness.config import catalog
    from harness.data.kinds import KINDS
    from harness.losses import LOSSES
    from harness.sweeps import study

    assert set(LOSSES) == set(catalog.LOSSES)
    assert set(KINDS) == set(catalog.DATASETS)
    assert all(KINDS[name].on_disk == kind.on_disk for name, kind in catalog.DATASETS.items())
    import torch
    params = [torch.nn.Parameter(torch.zeros(1))]
    for name in catalog.OPTIMIZERS:
        build.build_optimizer(name, params, lr=0.1, weight_decay=0.0)
    for name in catalog.SCHEDULERS:
        build.build_scheduler(name, torch.optim.SGD(params, lr=0.1), epochs=2)
    assert set(study.SAMPLERS) == set(catalog.SAMPLERS) and set(study.PRUNERS) == set(catalog.PRUNERS)
    from harness.models import blocks
    assert set(blocks.UPSAMPLES) == set(catalog.KNOBS["upsample"].choices)
    assert set(blocks.PADDING_MODES) == set(catalog.KNOBS["padding_mode"].choices)
    assert set(blocks.ACTIVATIONS) == set(catalog.KNOBS["activation"].choices)
    assert set(blocks.DOWNSAMPLES) == set(catalog.KNOBS["downsample"].choices)
    for arch, entry in catalog.ARCHS.items():  # each entry names a real class whose constructor takes its knobs
        assert (REPO / "harness" / "models" / f"{entry.module}.py").is_file(), arch
        assert set(entry.knobs) <= set(catalog.KNOBS), arch


def test_a_new_architecture_is_one_model_file_and_one_catalog_entry(tmp_path):
    """A toy architecture, registered the way README's "Extending" says: a model file (here, a module
    put in place before the harness is imported) and one ARCHS entry. Specs then accept it, the
    schema lists it, and a run trains it; an unknown name still lists every valid one."""
    code = textwrap.dedent(f"""
        import sys, types
        import torch
        from torch import nn
        toy = types.ModuleType("harness.models.toy")  # what harness/models/toy.py would hold

        class Toy(nn.Module):
            def __init__(self, *, out_channels, grad_checkpointing, base_width, dropout):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, base_width, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout),
                                          nn.Conv2d(base_width, out_channels, 1))

            def forward(self, x):
                return self.body(x)

        toy.Toy = Toy
        sys.modules["harness.models.toy"] = toy
        from harness.config import catalog
        catalog.ARCHS["toy"] = catalog.Arch("toy", "Toy", frozenset({{"base_width", "dropout"}}))  # the entry
        catalog.ARCH_KNOBS["toy"] = catalog.ARCHS["toy"].knobs - catalog.ANY_ARCH
        from harness.config.load import SpecError, load_spec
        from harness.build import build_model, list_models
        from harness.run import run_experiment
        from harness.tracking.base import NullTracker
        spec = load_spec({str(REPO / "experiments" / "debug.yaml")!r},
                         ["model.arch=toy", "model.base_width=8", "train.epochs=1", "log_model=false"])
        assert "toy" in list_models()
        assert type(build_model(spec).net).__name__ == "Toy"
        result = run_experiment(spec, lambda params, tags: NullTracker(),
                                checkpoint_root=__import__("pathlib").Path("ck"))
        print("test/dice", result.test["test/dice"])
        try:
            load_spec({str(REPO / "experiments" / "debug.yaml")!r}, ["model.arch=toy", "model.upsample=nearest"])
        except SpecError as err:
            print("knob error:", err)
        try:
            load_spec({str(REPO / "experiments" / "debug.yaml")!r}, ["model.arch=segformer"])
        except SpecError as err:
            print("name error:", err)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test/dice" in out.stdout
    assert "model.upsample='nearest' does not apply to model.arch=toy" in out.stdout
    assert "'toy'" in out.stdout.split("name error:")[1] and "'unet'" in out.stdout.split("name error:")[1]


def test_no_function_in_harness_takes_more_than_6_parameters():
    """Components take plain arguments or a small frozen settings object: at most 6 named parameters
    (self/cls not counted). nn.Module constructors whose parameters are an architecture's knobs are
    exempt. `python3 .ci/sizes.py harness` prints the counts and function sizes."""
    over = []
    for path in _harness_files():
        tree = ast.parse(path.read_text())
        modules = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                   and any(getattr(b, "attr", getattr(b, "id", "")) == "Module" for b in n.bases)}
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)] + [tree]:
            for node in (n for n in getattr(cls, "body", []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
                if getattr(cls, "name", None) in modules and node.name == "__init__":
                    continue
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                if len(names) > 6:
                    over.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({len(names)})")
    assert over == []
