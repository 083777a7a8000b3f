"""The README names only what exists: every `make` target it mentions is in the Makefile, every path
into the repository's own folders (harness/, analysis/, experiments/, docs/, tests/, ...) is there,
and it stays a guide, not a manual (at most 25 KB)."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO

README = (REPO / "README.md").read_text()


def _tracked_top_level() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return {f.split("/")[0] for f in files if "/" in f}


def _repo_paths(text: str) -> set[str]:
    """Tokens of code spans and link targets that start with a tracked top-level folder."""
    folders = _tracked_top_level() - {"mlruns"}  # mlruns/ holds what runs write, made at run time
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)\s]+)\)", text)
    found = set()
    for span in spans:
        for token in span.split():
            token = token.strip(",;:()'\"").split("=")[-1].split("#")[0].rstrip(".")
            if re.fullmatch(r"[\w./-]+", token) and token.split("/")[0] in folders and "<" not in token:
                found.add(token)
    return found


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z-]+)", README))
    assert named and sorted(named - targets) == []


def test_every_repository_path_the_readme_names_exists():
    paths = _repo_paths(README)
    assert len(paths) > 10  # (else the pattern found nothing to check)
    assert sorted(p for p in paths if not (REPO / p).exists()) == []


def test_the_readme_stays_a_guide():
    assert len(README.encode()) <= 25_000
    first_section = README.split("\n## ")[1]
    assert first_section.startswith("Two commands") and "make experiment" in first_section
    assert "\n## Your first comparison" in README


def test_every_file_and_folder_of_the_layout_exists():
    """The Layout block: each top-level folder, and each module or folder named at the start of the
    lines below it, is in the tree (anywhere below that folder)."""
    block = README.split("## Layout", 1)[1].split("```")[1]
    top, missing, checked = None, [], 0
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            top = line.split()[0].rstrip("/")
            missing += [] if (REPO / top).is_dir() else [top]
            continue
        for name in re.findall(r"(?<![\w/.])(\w+(?:\.py|/))", line.split("  ")[1] if line.startswith("  ") else line):
            checked += 1
            stem = name.rstrip("/")
            if not any(p.name == stem for p in (REPO / top).rglob(stem)):
                missing.append(f"{top}/{name}")
    assert checked > 20 and missing == []
