"""Speed and peak memory of the data tools at the sizes the data issue names, each in a fresh process.

    python benchmarks/data_speed.py
1. process_data.py --mode unsupervised on 1,000,000 wiki1m-format lines (targets: < 60 s, < 2 GiB peak);
2. offline_filter_data.py on 100,000 supervised rows, query and negative prompts measured too (target: < 60 s).
Lines and rows are real Wikipedia text from the packaged articles, repeated to reach the size. The filter uses
the tiny test tokenizer (a 512-token BPE: more tokens per text than a real tokenizer, so a harsher test).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grace.data.assets import load_wiki_articles  # noqa: E402
from grace.data.demo import wiki_sentences, wiki_triples  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident GiB of a child process."""
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="wiki1m-format lines to process")
    parser.add_argument("--rows", type=int, default=100_000, help="supervised rows to filter")
    args = parser.parse_args()
    articles = load_wiki_articles()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wiki = tmp / "wiki1m.txt"
        wiki.write_text("\n".join(islice(cycle(wiki_sentences(articles)), args.lines)) + "\n", encoding="utf-8")
        seconds, peak = timed([sys.executable, "process_data.py", "--mode", "unsupervised", "--input_file", str(wiki),
                               "--local_dir", str(tmp / "unsupervised")])
        print(f"process_data.py, {args.lines:,} lines: {seconds:.1f} s, peak memory {peak:.2f} GiB")

        echo = tmp / "echo.jsonl"
        with open(echo, "w", encoding="utf-8") as f:
            for triple in islice(cycle(wiki_triples(articles)), args.rows):
                f.write(json.dumps(triple) + "\n")
        subprocess.run([sys.executable, "process_data.py", "--mode", "supervised", "--input_file", str(echo),
                        "--local_dir", str(tmp / "supervised"), "--test_ratio", "0"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tokenizer = build_tiny_model(tmp / "tiny")
        seconds, _ = timed([sys.executable, "offline_filter_data.py", "--train_parquet",
                            str(tmp / "supervised/train.parquet"), "--out_dir", str(tmp / "filtered"),
                            "--tokenizer_path", str(tokenizer), "--max_len", "1024"])
        print(f"offline_filter_data.py, {args.rows:,} supervised rows (3 prompts each): {seconds:.1f} s")


if __name__ == "__main__":
    main()
