"""Keep the rows whose chat prompts fit in --max_len tokens of the training tokenizer (the reference's flags).

    python offline_filter_data.py --train_parquet data/supervised/train.parquet \
        --val_parquet data/supervised/test.parquet --out_dir data/supervised_filtered_overlong \
        --tokenizer_path Qwen/Qwen2.5-1.5B-Instruct --max_len 1024
"""

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_parquet", required=True, type=Path, help="training parquet to filter")
    parser.add_argument("--val_parquet", type=Path, default=None, help="validation parquet (written as test.parquet)")
    parser.add_argument("--out_dir", required=True, type=Path, help="output folder")
    parser.add_argument("--tokenizer_path", required=True, help="tokenizer of the model to train (path or hub id)")
    parser.add_argument("--max_len", type=int, default=1024, help="max prompt tokens (= data.max_prompt_length)")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="tokenizer threads")
    parser.add_argument("--prompt_key", default="prompt", help="column holding the chat messages")
    parser.add_argument("--main_prompt_only", action="store_true",
                        help="measure only the main prompt, as the reference did (long queries survive)")
    parser.add_argument("--batch_rows", type=int, default=4096, help="rows tokenised per batch")
    args = parser.parse_args(argv)

    os.environ["RAYON_NUM_THREADS"] = str(args.num_proc)  # the fast tokenizer's thread pool
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    from grace.data.length_filter import filter_parquet

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path, trust_remote_code=True, use_fast=True)
    if not tokenizer.is_fast:
        print(f"warning: {args.tokenizer_path} has no fast tokenizer; filtering will be slow", file=sys.stderr)
    jobs = [(args.train_parquet, args.out_dir / "train.parquet")]
    if args.val_parquet is not None:
        jobs.append((args.val_parquet, args.out_dir / "test.parquet"))
    for source, destination in jobs:
        try:
            result = filter_parquet(source, destination, tokenizer, args.max_len, args.prompt_key,
                                    args.main_prompt_only, args.batch_rows)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        dropped = sum(result.dropped.values())
        print(f"{source}: kept {result.kept}, dropped {dropped}"
              + "".join(f"\n  {count:>8}  {reason}" for reason, count in result.dropped.most_common()))
        print(f"wrote {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
