"""python -m grace.study CONFIG: run a study's arms (skipping finished ones, resuming interrupted training) and
write OUT/<name>/report.md, results.json and plots. See `grace/study/runner.py` for the layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from grace.study.config import load_config
from grace.study.report import write_report
from grace.study.runner import run_study


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grace.study", description=__doc__)
    parser.add_argument("config", type=Path, help="study configuration (YAML or JSON; see grace/study/config.py)")
    parser.add_argument("--out", type=Path, default=Path("study_out"), help="parent folder of the study's folder")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arms (the report covers all done)")
    parser.add_argument("--archive", type=Path, default=None,
                        help="committed folder of finished arms (grace/study/archive.py): arms found there are not "
                             "re-run, and each arm is copied there as it finishes")
    parser.add_argument("--mteb_folder", type=Path, default=None,
                        help="MTEB-offline data folder, instead of the configuration's evaluation.mteb_folder")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    if args.arms:
        unknown = sorted(set(args.arms) - {arm.name for arm in config.arms})
        if unknown:
            raise SystemExit(f"--arms: {unknown} not in {args.config}")
    if args.mteb_folder is not None:
        config.evaluation.mteb_folder = str(args.mteb_folder)
    study_dir = args.out.resolve() / config.name
    results = run_study(config, args.config.read_text(encoding="utf-8"), study_dir, args.arms, args.archive)
    report = write_report(config, results, study_dir, args.config)
    print(f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
