#!/usr/bin/env bash
# GRACE unsupervised training (SimCSE wiki1m sentences): train.sh with the unsupervised data and train mode.
set -euo pipefail
export TRAIN_MODE=unsupervised
export DATA_DIR=${DATA_DIR:-data/unsupervised_filtered_overlong}
exec bash "$(dirname "$0")/train.sh" "$@"
