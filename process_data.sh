#!/usr/bin/env bash
# Both of the reference's data pipelines: raw file -> train/test parquet -> prompts that fit MAX_LEN tokens.
#   supervised:   $SUPERVISED_INPUT   -> data/supervised   -> data/supervised_filtered_overlong
#   unsupervised: $UNSUPERVISED_INPUT -> data/unsupervised -> data/unsupervised_filtered_overlong
# Stops at the first error. Extra process_data.py flags (e.g. --strict, --max_samples N) go in PROCESS_ARGS.
set -euo pipefail

PYTHON=${PYTHON:-python3}
SUPERVISED_INPUT=${SUPERVISED_INPUT:-echo_data_total.jsonl}
UNSUPERVISED_INPUT=${UNSUPERVISED_INPUT:-wiki1m_for_simcse.txt}
TOKENIZER_PATH=${TOKENIZER_PATH:-Qwen/Qwen2.5-1.5B-Instruct}
DATA_DIR=${DATA_DIR:-data}
TEST_RATIO=${TEST_RATIO:-0.01}
MAX_LEN=${MAX_LEN:-1024}
PROCESS_ARGS=${PROCESS_ARGS:-}

for mode in supervised unsupervised; do
    if [ "$mode" = supervised ]; then input=$SUPERVISED_INPUT; else input=$UNSUPERVISED_INPUT; fi
    echo "== $mode: $input"
    # shellcheck disable=SC2086  # PROCESS_ARGS holds several flags
    "$PYTHON" process_data.py --mode "$mode" --input_file "$input" --local_dir "$DATA_DIR/$mode" \
        --test_ratio "$TEST_RATIO" $PROCESS_ARGS
    "$PYTHON" offline_filter_data.py --train_parquet "$DATA_DIR/$mode/train.parquet" \
        --val_parquet "$DATA_DIR/$mode/test.parquet" --out_dir "$DATA_DIR/${mode}_filtered_overlong" \
        --tokenizer_path "$TOKENIZER_PATH" --max_len "$MAX_LEN"
done
echo "done: $DATA_DIR/supervised_filtered_overlong and $DATA_DIR/unsupervised_filtered_overlong"
