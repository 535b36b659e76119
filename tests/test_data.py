"""process_data.py, offline_filter_data.py, process_data.sh and the packaged demo data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

import offline_filter_data
import process_data
from grace.data.demo import main as demo_main
from grace.data.records import supervised_record, unsupervised_record
from grace.prompts import SYSTEM_PROMPT
from grace.verl_ext.dataset import GraceRLDataset

ROOT = Path(__file__).resolve().parents[1]


def triple(i):
    return {"query": f"query {i}", "positive": f"positive document {i}", "negative": f"negative document {i}"}


# Every kind of bad line, with the line number (1-based) at which it stands in BAD_FILE.
BAD_LINES = [
    (b"", "blank line"),
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "JSON that is not an object"),
    (json.dumps({"query": "q", "positive": "p"}).encode(), "missing field 'negative'"),
    (json.dumps({"query": "q", "positive": 3, "negative": "n"}).encode(), "non-string field 'positive'"),
    (json.dumps({"query": "  ", "positive": "p", "negative": "n"}).encode(), "empty field 'query'"),
    (json.dumps({**triple(0), "source": 5}).encode(), "non-string field 'source'"),
    ('{"query": "caf\xe9", "positive": "p", "negative": "n"}'.encode("latin-1"), "undecodable bytes (not UTF-8)"),
]


def write_mixed_jsonl(path: Path, good: int = 10) -> Path:
    lines = [json.dumps({**triple(i), "source": "s" if i % 2 else None}).encode() for i in range(good)]
    for offset, (raw, _) in enumerate(BAD_LINES):
        lines.insert(2 * offset + 1, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run_process(*args):
    return process_data.main([str(a) for a in args])


def test_supervised_file_has_the_reference_schema_and_split(tmp_path):
    src = tmp_path / "echo.jsonl"
    src.write_text("".join(json.dumps({**triple(i), "source": "e5"}) + "\n" for i in range(200)))
    assert run_process("--mode", "supervised", "--input_file", src, "--local_dir", tmp_path / "out") == 0
    train, test = (pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in ("train", "test"))
    assert len(test) == 2 and len(train) == 198  # int(200 * 0.01), the first ones
    assert list(test["extra_info"].map(lambda e: e["line_idx"])) == [0, 1]
    assert list(train["extra_info"].map(lambda e: e["index"]))[:3] == [0, 1, 2]  # index restarts per split
    # The reference's records (here: our record builder, written the reference's way with pandas) are identical.
    expected = pd.DataFrame([supervised_record("query 2", "positive document 2", "negative document 2", "e5", 2,
                                               "train", 0)])
    assert list(train.columns) == list(expected.columns)
    got, want = train.iloc[0].to_dict(), expected.iloc[0].to_dict()
    assert [dict(m) for m in got.pop("prompt")] == [{"role": "system", "content": SYSTEM_PROMPT},
                                                    {"role": "user", "content": "positive document 2"}]
    want.pop("prompt")
    assert got == want
    assert not (tmp_path / "out" / "train.json").exists()  # the JSON copies are opt-in


def test_unsupervised_text_file(tmp_path):
    src = tmp_path / "wiki.txt"
    src.write_text("first sentence\n\n  second sentence  \nthird\n")
    assert run_process("--mode", "unsupervised", "--input_file", src, "--local_dir", tmp_path / "o",
                       "--test_ratio", "0.34", "--write_json") == 0
    test = pd.read_parquet(tmp_path / "o/test.parquet")
    train = json.loads((tmp_path / "o/train.json").read_text())
    assert [e["text"] for e in test["extra_info"]] == ["first sentence"]
    assert [r["extra_info"]["text"] for r in train] == ["second sentence", "third"]
    assert [r["extra_info"]["line_idx"] for r in train] == [2, 3]  # raw line numbers: the blank line counts
    assert "multi_input" not in test.columns
    assert train[0] == unsupervised_record("second sentence", "wiki1m", 2, "train", 0)


def test_every_kind_of_bad_line_is_counted_with_its_line_number(tmp_path, capsys):
    src = write_mixed_jsonl(tmp_path / "mixed.jsonl")
    assert run_process("--mode", "supervised", "--input_file", src, "--local_dir", tmp_path / "o",
                       "--test_ratio", "0") == 0
    out = capsys.readouterr().out
    assert f"skipped {len(BAD_LINES)} bad line(s)" in out
    for offset, (_, reason) in enumerate(BAD_LINES):
        assert f"{reason} (lines {2 * offset + 2})" in out
    assert len(pd.read_parquet(tmp_path / "o/train.parquet")) == 10
    assert "wrote 10 train and 0 test rows" in out


def test_strict_stops_at_the_first_bad_line(tmp_path, capsys):
    src = write_mixed_jsonl(tmp_path / "mixed.jsonl")
    assert run_process("--mode", "supervised", "--input_file", src, "--local_dir", tmp_path / "o", "--strict") == 1
    assert f"{src}:2: blank line" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*.parquet*"))


@pytest.mark.parametrize("args, message", [
    (["--input_file", "missing.jsonl"], "input file not found"),
    (["--input_file", "{empty}"], "no usable supervised sample"),
    (["--input_file", "{good}", "--test_ratio", "1.5"], "test_ratio"),
])
def test_unusable_input_is_a_clear_error(tmp_path, capsys, args, message):
    (tmp_path / "empty.jsonl").write_text("\n\nnot json\n")
    (tmp_path / "good.jsonl").write_text(json.dumps(triple(0)) + "\n")
    args = [a.format(empty=tmp_path / "empty.jsonl", good=tmp_path / "good.jsonl") for a in args]
    assert run_process("--mode", "supervised", "--local_dir", tmp_path / "o", *args) == 1
    assert message in capsys.readouterr().err


def test_unknown_mode_is_rejected(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_process("--mode", "contrastive", "--input_file", "x", "--local_dir", tmp_path)
    assert exit_info.value.code == 2


def test_failed_run_keeps_earlier_outputs(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(triple(i)) + "\n" for i in range(5)))
    assert run_process("--mode", "supervised", "--input_file", good, "--local_dir", tmp_path / "o") == 0
    before = (tmp_path / "o/train.parquet").read_bytes()
    assert run_process("--mode", "supervised", "--input_file", write_mixed_jsonl(tmp_path / "bad.jsonl"),
                       "--local_dir", tmp_path / "o", "--strict") == 1
    assert (tmp_path / "o/train.parquet").read_bytes() == before


def test_shuffled_split_is_seeded_and_the_same_size(tmp_path):
    src = tmp_path / "wiki.txt"
    src.write_text("".join(f"sentence number {i}\n" for i in range(100)))
    tests = []
    for run, seed in enumerate([3, 3, 4]):
        out = tmp_path / f"o{run}"
        assert run_process("--mode", "unsupervised", "--input_file", src, "--local_dir", out, "--test_ratio", "0.1",
                           "--shuffle", "--seed", seed) == 0
        tests.append([e["line_idx"] for e in pd.read_parquet(out / "test.parquet")["extra_info"]])
    assert len(tests[0]) == 10 and tests[0] == tests[1] and tests[0] != tests[2]
    assert tests[0] != list(range(10))


def test_max_samples_applies_before_the_split(tmp_path):
    src = tmp_path / "wiki.txt"
    src.write_text("".join(f"sentence {i}\n" for i in range(1000)))
    assert run_process("--mode", "unsupervised", "--input_file", src, "--local_dir", tmp_path / "o",
                       "--max_samples", "300", "--test_ratio", "0.1") == 0
    assert len(pd.read_parquet(tmp_path / "o/train.parquet")) == 270
    assert len(pd.read_parquet(tmp_path / "o/test.parquet")) == 30


# ---------------------------------------------------------------- the length filter
def test_filter_measures_query_and_negative_unless_main_prompt_only(tmp_path, tiny_model_path, capsys):
    long_text = "word " * 400
    rows = [supervised_record("short query", "short positive", "short negative", None, 0, "train", 0),
            supervised_record(long_text, "short positive", "short negative", None, 1, "train", 1),
            supervised_record("short query", "short positive", long_text, None, 2, "train", 2),
            supervised_record("short query", long_text, "short negative", None, 3, "train", 3)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows[:1]).to_parquet(tmp_path / "test.parquet")
    common = ["--train_parquet", str(tmp_path / "train.parquet"), "--tokenizer_path", str(tiny_model_path),
              "--max_len", "200"]
    assert offline_filter_data.main(common + ["--val_parquet", str(tmp_path / "test.parquet"),
                                              "--out_dir", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    assert "kept 1, dropped 3" in out
    for reason in ("main prompt > 200 tokens", "query prompt > 200 tokens", "negative prompt > 200 tokens"):
        assert f"1  {reason}" in out
    kept = pd.read_parquet(tmp_path / "full/train.parquet")
    assert list(kept["extra_info"].map(lambda e: e["index"])) == [0]
    assert len(pd.read_parquet(tmp_path / "full/test.parquet")) == 1
    assert pq.read_schema(tmp_path / "full/train.parquet").equals(pq.read_schema(tmp_path / "train.parquet"))

    assert offline_filter_data.main(common + ["--out_dir", str(tmp_path / "main"), "--main_prompt_only"]) == 0
    assert list(pd.read_parquet(tmp_path / "main/train.parquet")["extra_info"].map(lambda e: e["index"])) == [0, 1, 2]


def test_filter_counts_tokens_as_verl_does(tmp_path, tiny_model_path):
    """A prompt of exactly max_len tokens is kept, one more is dropped (verl's dataset tokenisation)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    record = supervised_record("q", "Paris is the capital of France.", "n", None, 0, "train", 0)
    pd.DataFrame([record]).to_parquet(tmp_path / "train.parquet")
    templated = tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=False)
    length = len(tokenizer(templated, add_special_tokens=False)["input_ids"])
    for max_len, kept in ((length, 1), (length - 1, 0)):
        out = tmp_path / f"f{max_len}"
        assert offline_filter_data.main(["--train_parquet", str(tmp_path / "train.parquet"), "--out_dir", str(out),
                                         "--tokenizer_path", str(tiny_model_path), "--max_len", str(max_len),
                                         "--main_prompt_only"]) == 0
        assert len(pd.read_parquet(out / "train.parquet")) == kept


def test_filter_reports_a_missing_file(tmp_path, tiny_model_path, capsys):
    assert offline_filter_data.main(["--train_parquet", str(tmp_path / "nope.parquet"), "--out_dir", str(tmp_path),
                                     "--tokenizer_path", str(tiny_model_path)]) == 1
    assert "parquet file not found" in capsys.readouterr().err


# ---------------------------------------------------------------- the whole pipeline on the packaged demo data
def test_process_data_sh_on_demo_data_feeds_the_training_dataset(tmp_path, tiny_model_path):
    demo_main(["--out", str(tmp_path / "raw"), "--max_triples", "300", "--max_sentences", "300"])
    env = dict(os.environ, PYTHON=sys.executable, DATA_DIR=str(tmp_path / "data"), MAX_LEN="400",
               SUPERVISED_INPUT=str(tmp_path / "raw/echo_demo.jsonl"), TEST_RATIO="0.1",
               UNSUPERVISED_INPUT=str(tmp_path / "raw/wiki_demo.txt"), TOKENIZER_PATH=str(tiny_model_path))
    done = subprocess.run(["bash", "process_data.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    config = OmegaConf.create({"max_prompt_length": 400, "truncation": "error", "filter_overlong_prompts": False,
                               "cache_dir": str(tmp_path / "cache")})
    for mode in ("supervised", "unsupervised"):
        folder = tmp_path / "data" / f"{mode}_filtered_overlong"
        dataset = GraceRLDataset(str(folder / "train.parquet"), tokenizer, config)
        assert dataset.train_mode == mode and len(dataset) > 10
        assert ("query_input_ids" in dataset[0]) == (mode == "supervised")


def test_process_data_sh_stops_at_the_first_error(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, DATA_DIR=str(tmp_path), SUPERVISED_INPUT=str(tmp_path / "none"))
    done = subprocess.run(["bash", "process_data.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "input file not found" in done.stderr
    assert "== unsupervised" not in done.stdout


def test_demo_data_is_deterministic_and_real(tmp_path):
    for run in ("a", "b"):
        demo_main(["--out", str(tmp_path / run), "--max_triples", "50", "--max_sentences", "20"])
    assert (tmp_path / "a/echo_demo.jsonl").read_bytes() == (tmp_path / "b/echo_demo.jsonl").read_bytes()
    triples = [json.loads(line) for line in (tmp_path / "a/echo_demo.jsonl").read_text().splitlines()]
    assert len(triples) == 50 and all(t["positive"] != t["negative"] and t["query"] for t in triples)
    assert len((tmp_path / "a/wiki_demo.txt").read_text().splitlines()) == 20
