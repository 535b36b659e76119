"""verl checkpoint -> Hugging Face folder, with the reference's command line.

    python scripts/merge_model.py merge --backend fsdp --local_dir checkpoints/GRACE/test_exp \
        --target_dir merge_models/ [--hf_model_path Qwen/Qwen2.5-1.5B-Instruct]
    python scripts/merge_model.py test --backend fsdp --local_dir ... --test_hf_dir merge_models/

--local_dir may be the actor folder, a global_step_* folder, the checkpoint root or an experiment folder: the
latest global_step_*/actor below it is used, and named.
"""

import argparse
import sys
from pathlib import Path

from grace.merge import merge_checkpoint, test_merged_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    operations = parser.add_subparsers(dest="operation", required=True, help="merge or test")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", required=True, choices=["fsdp", "megatron"], help="training backend")
    common.add_argument("--local_dir", required=True, type=Path,
                        help="checkpoint: actor folder, global_step_* folder, checkpoint root or experiment folder")
    common.add_argument("--hf_model_path", default=None,
                        help="read config, generation config and tokenizer from here (default: the checkpoint's copy)")
    common.add_argument("--tie-word-embedding", action="store_true", help="accepted for compatibility (megatron)")
    common.add_argument("--is-value-model", action="store_true", help="accepted for compatibility (megatron)")
    merge = operations.add_parser("merge", parents=[common], help="write a Hugging Face folder")
    merge.add_argument("--target_dir", default="tmp", type=Path, help="output folder")
    merge.add_argument("--hf_upload_path", default=None, help="also upload to this Hugging Face Hub repo id")
    merge.add_argument("--private", action="store_true", help="make the uploaded repo private")
    test = operations.add_parser("test", parents=[common], help="compare the checkpoint with a merged folder")
    test.add_argument("--test_hf_dir", required=True, type=Path, help="merged Hugging Face folder to compare with")
    args = parser.parse_args(argv)
    try:
        if args.operation == "merge":
            actor = merge_checkpoint(args.local_dir, args.target_dir, args.backend, args.hf_model_path,
                                     args.hf_upload_path, args.private)
            print(f"merged {actor} into {args.target_dir}")
        else:
            actor = test_merged_checkpoint(args.local_dir, args.test_hf_dir, args.backend)
            print(f"{actor} matches {args.test_hf_dir}")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
