"""Raw Echo JSONL / wiki1m text -> verl-ready train.parquet and test.parquet (the reference's flags).

    python process_data.py --mode supervised --input_file echo_data_total.jsonl --local_dir data/supervised
    python process_data.py --mode unsupervised --input_file wiki1m_for_simcse.txt --local_dir data/unsupervised
"""

import argparse
import sys
from pathlib import Path

from grace.data.process import BadInputError, copy_to_hdfs, process_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", required=True, choices=["supervised", "unsupervised"],
                        help="supervised: Echo JSONL (query, positive, negative); unsupervised: one sentence per line")
    parser.add_argument("--input_file", required=True, type=Path, help="raw input (.jsonl, or .txt for unsupervised)")
    parser.add_argument("--local_dir", required=True, type=Path, help="output folder for train/test.parquet")
    parser.add_argument("--hdfs_dir", default=None, help="also copy the output folder to this HDFS path")
    parser.add_argument("--test_ratio", type=float, default=0.01, help="share of samples in the test split")
    parser.add_argument("--max_samples", type=int, default=None, help="keep only the first N usable samples")
    parser.add_argument("--shuffle", action="store_true", help="draw the test split at random (default: the first "
                                                                  "test_ratio share, as the reference)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --shuffle")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    parser.add_argument("--write_json", action="store_true", help="also write indented train/test.json copies "
                                                                     "(the reference always did; large and slow)")
    args = parser.parse_args(argv)
    try:
        result = process_file(args.input_file, args.local_dir, args.mode, test_ratio=args.test_ratio,
                              max_samples=args.max_samples, shuffle=args.shuffle, seed=args.seed,
                              strict=args.strict, write_json=args.write_json)
    except (BadInputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.report.summary())
    print(f"wrote {result.train_rows} train and {result.test_rows} test rows to {args.local_dir}")
    if result.test_rows == 0 and args.test_ratio > 0:
        print(f"warning: the test split is empty (int({result.train_rows} * {args.test_ratio}) = 0); verl needs "
              f"validation rows even when validation is off", file=sys.stderr)
    if args.hdfs_dir:
        copy_to_hdfs(args.local_dir, args.hdfs_dir)
        print(f"copied {args.local_dir} to {args.hdfs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
