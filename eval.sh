#!/usr/bin/env bash
# Score the latest GRACE checkpoint on MTEB: merge it (latest global_step_*/actor under CHECKPOINT_DIR), then
# evaluate every task in one run and write timing_results_<date>.txt with per-task times.
#   TASKS=all (56 tasks) | subset (the reference's 9) | "STS16 SciFact ..." ; SKIP_MERGE=1 to evaluate MERGED_DIR as is.
#   MTEB_DATA_DIR=folder: read the named STS and classification tasks from local files (eval_mteb.py --data_folder);
#   MTEB_DATA_ITEMS="150 Banking77Classification=300": only their fixed test part (--data_items), as the studies score.
# Needs the GPU flavour for vLLM generation; on a CPU the HF generator is used.
set -euo pipefail

export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0,1,2,3}
export VLLM_TORCH_COMPILE_LEVEL=0
export TORCH_COMPILE_DISABLE=1
export VLLM_USE_MODELSCOPE=false
export VLLM_WORKER_MULTIPROC_METHOD=spawn
export VLLM_ENGINE_ITERATION_TIMEOUT_S=1800
export TOKENIZERS_PARALLELISM=false
export VLLM_TENSOR_PARALLEL_SIZE=${VLLM_TENSOR_PARALLEL_SIZE:-4}
export VLLM_GPU_MEMORY_UTILIZATION=${VLLM_GPU_MEMORY_UTILIZATION:-0.4}
INPUT_MAX_LENGTH=${INPUT_MAX_LENGTH:-1024}
THINKING_MAX_LENGTH=${THINKING_MAX_LENGTH:-2048}
POOLING_METHOD=${POOLING_METHOD:-mean}

PYTHON=${PYTHON:-python3}
BASE_MODEL=${BASE_MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-checkpoints/GRACE/test_exp}
MERGED_DIR=${MERGED_DIR:-merge_models}
OUTPUT_DIR=${OUTPUT_DIR:-results}
MODEL_NAME=${MODEL_NAME:-GRACE-1.5B}
BATCH_SIZE=${BATCH_SIZE:-16}
TASKS=${TASKS:-all}
SKIP_MERGE=${SKIP_MERGE:-0}
EVAL_ARGS=${EVAL_ARGS:-}
MTEB_DATA_DIR=${MTEB_DATA_DIR:-}
MTEB_DATA_ITEMS=${MTEB_DATA_ITEMS:-}
DATA_ARGS=()
if [ -n "$MTEB_DATA_DIR" ]; then
    DATA_ARGS=(--data_folder "$MTEB_DATA_DIR")
fi
if [ -n "$MTEB_DATA_ITEMS" ]; then
    read -r -a ITEMS <<< "$MTEB_DATA_ITEMS"
    DATA_ARGS+=(--data_items "${ITEMS[@]}")
fi

RETRIEVAL_TASKS=(ArguAna CQADupstackRetrieval FiQA2018 NFCorpus SCIDOCS SciFact ClimateFEVER DBPedia NQ FEVER
                 HotpotQA MSMARCO QuoraRetrieval TRECCOVID Touche2020)
RERANKING_TASKS=(AskUbuntuDupQuestions MindSmallReranking SciDocsRR StackOverflowDupQuestions)
# The reference listed 10 of the 11 clustering tasks; StackExchangeClusteringP2P is back (56 tasks in all).
CLUSTERING_TASKS=(ArxivClusteringP2P ArxivClusteringS2S BiorxivClusteringP2P BiorxivClusteringS2S
                  MedrxivClusteringP2P MedrxivClusteringS2S RedditClustering RedditClusteringP2P
                  StackExchangeClustering StackExchangeClusteringP2P TwentyNewsgroupsClustering)
PAIR_CLASSIFICATION_TASKS=(SprintDuplicateQuestions TwitterSemEval2015 TwitterURLCorpus)
CLASSIFICATION_TASKS=(AmazonCounterfactualClassification AmazonPolarityClassification AmazonReviewsClassification
                      Banking77Classification EmotionClassification ImdbClassification
                      ToxicConversationsClassification MTOPDomainClassification MassiveIntentClassification
                      MassiveScenarioClassification MTOPIntentClassification TweetSentimentExtractionClassification)
STS_TASKS=(BIOSSES SICK-R STS12 STS13 STS14 STS15 STS16 STS17 STSBenchmark STS22)
SUMMARIZATION_TASKS=(SummEval)
SUBSET_TASKS=(Banking77Classification EmotionClassification MedrxivClusteringS2S TwitterSemEval2015
              AskUbuntuDupQuestions BIOSSES STS17 STSBenchmark SummEval)
ALL_TASKS=("${RETRIEVAL_TASKS[@]}" "${RERANKING_TASKS[@]}" "${CLUSTERING_TASKS[@]}" "${PAIR_CLASSIFICATION_TASKS[@]}"
           "${CLASSIFICATION_TASKS[@]}" "${STS_TASKS[@]}" "${SUMMARIZATION_TASKS[@]}")

case "$TASKS" in
    all) TASK_LIST=("${ALL_TASKS[@]}") ;;
    subset) TASK_LIST=("${SUBSET_TASKS[@]}") ;;
    *) read -r -a TASK_LIST <<< "$TASKS" ;;
esac

if [ "$SKIP_MERGE" != 1 ]; then
    "$PYTHON" scripts/merge_model.py merge --backend fsdp --hf_model_path "$BASE_MODEL" \
        --local_dir "$CHECKPOINT_DIR" --target_dir "$MERGED_DIR"
fi

mkdir -p "$OUTPUT_DIR"
start=$(date +%s)
# shellcheck disable=SC2086  # EVAL_ARGS holds several flags
"$PYTHON" eval_mteb.py --model_path "$MERGED_DIR" --tasks "${TASK_LIST[@]}" --output_dir "$OUTPUT_DIR" \
    --batch_size "$BATCH_SIZE" --input_max_length "$INPUT_MAX_LENGTH" --thinking_max_length "$THINKING_MAX_LENGTH" \
    --pooling_method "$POOLING_METHOD" --model_name "$MODEL_NAME" "${DATA_ARGS[@]}" $EVAL_ARGS
end=$(date +%s)

log="$OUTPUT_DIR/timing_results_$(date +%Y%m%d_%H%M%S).txt"
"$PYTHON" - "$OUTPUT_DIR/summary.json" "$((end - start))" > "$log" <<'PY'
import json, sys
summary, total = json.load(open(sys.argv[1])), int(sys.argv[2])
print("Task Timing Report")
print(f"model: {summary['model']}")
print(f"total wall time: {total / 60:.2f} min ({total} s, model loading included)")
print(f"{'task':45s} {'seconds':>9s} {'score':>7s}")
for row in summary["tasks"]:
    print(f"{row['task']:45s} {row['seconds']:9.1f} {row['score']:7.2f}")
PY
cat "$log"
echo "timing log: $log"
