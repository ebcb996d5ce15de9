"""Command line: `python -m analysis report EXPORT_DIR --out OUT [--reference-arm ARM] [--seed N]
[--include-pilot] [--n-boot N]`. Exit status 2 on a bad export or arguments."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis.io import ExportError
from analysis.report import build_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="write summary.json, figures, report.html and notebook.ipynb"
    )
    report.add_argument("export_dir", type=Path, help="an export directory (export_study)")
    report.add_argument("--out", type=Path, required=True, help="directory to write into")
    report.add_argument(
        "--reference-arm", help='arm for relative changes (default "base", else the first arm)'
    )
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    report.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    report.add_argument(
        "--include-pilot", action="store_true", help="keep simulated pilot participants"
    )
    report.add_argument(
        "--rewards",
        type=Path,
        help="reply_rewards.csv from `manage.py score_study` (default: the one in the export)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        summary = build_report(
            args.export_dir,
            args.out,
            reference_arm=args.reference_arm,
            seed=args.seed,
            include_pilot=args.include_pilot,
            n_boot=args.n_boot,
            rewards=args.rewards,
        )
    except (ExportError, ValueError, OSError) as exc:
        print(f"analysis report: error: {exc}", file=sys.stderr)
        return 2
    sample = summary["sample"]
    print(
        f"{sample['n_analysed']} participants analysed ({sample['n_excluded']} excluded, "
        f"{sample['n_pilot_dropped']} pilots dropped); report written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
