"""Commands that train nothing: `audit` (what is wrong with a dataset), `models` (the architecture
names), `links` (each experiment's runs table in the MLflow UI)."""

from __future__ import annotations

from pathlib import Path

from harness import paths
from harness.commands import STOP_NOW, Command, bad_input
from harness.config.catalog import ON_DISK


def _audit_arguments(parser) -> None:
    parser.add_argument("root", type=Path,
                        help="dataset folder (official Oxford-IIIT Pet layout, or images/ + masks/)")
    parser.add_argument("--dataset", choices=ON_DISK, default=None,
                        help="layout (default: oxford_pet if annotations/trimaps exists, else folder)")
    parser.add_argument("--image-size", type=int, default=128, help="decode size, as in data.image_size (default 128)")
    parser.add_argument("--foreground", choices=("not_background", "pet_only"), default="not_background",
                        help="foreground rule used to find empty masks")
    parser.add_argument("--cache-dir", default=str(paths.CACHE),
                        help=f"dataset cache (default {paths.CACHE}); '' for none")
    parser.add_argument("--json", type=Path, default=None, help="also write the full result as JSON here")
    parser.add_argument("--limit", type=int, default=20, help="examples printed per finding (default 20)")


def _audit(args) -> int:
    import json

    from harness.data import DataError, DataSettings, build_data
    from harness.data.audit import format_audit

    kind = args.dataset or ("oxford_pet" if (args.root / "annotations" / "trimaps").is_dir() else "folder")
    try:
        data = build_data(DataSettings(
            kind, root=str(args.root), image_size=args.image_size, foreground=args.foreground, on_bad="skip",
            cache_dir=str(Path(args.cache_dir).resolve()) if args.cache_dir else None,
            require_splits=False))  # a folder whose files are all unusable is reported, not an error
    except DataError as err:
        return bad_input(err)
    print(f"{args.root} ({kind}, {args.image_size}px, foreground={args.foreground}, fingerprint {data.fingerprint})")
    print(format_audit(data.audit, args.limit))
    if args.json:
        args.json.write_text(json.dumps(data.audit, indent=1))
        print(f"wrote {args.json}")
    return 1 if data.audit["counts"]["problems"] else 0


def _models(args) -> int:
    from harness.build import list_models

    print("\n".join(list_models()))
    return 0


def _links_arguments(parser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="where the UI serves (default %(default)s)")


def _links(args) -> int:
    from harness.tracking.mlflow import runs_table_links

    for name, url in runs_table_links(args.url):
        print(f"  {name:<32} {url}")
    return 0


AUDIT = Command("check a dataset: unusable files, empty masks, near-duplicates across splits", _audit_arguments,
                _audit, STOP_NOW,
                description="Audit a dataset folder (decoding it into the cache if needed) and print what is wrong "
                            "with it. Exit 0 when every file is usable, 1 when some are not, 2 when the folder "
                            "cannot be read at all.")
MODELS = Command("list registered model names", lambda parser: None, _models, STOP_NOW)
LINKS = Command("print each experiment's runs-table link in the MLflow UI", _links_arguments, _links, STOP_NOW)
