#!/usr/bin/env bash
# The suite command: set up .venv, then execute the notebooks in order on the profile this
# hardware allows (t4 with a CUDA GPU, tiny without; or $GRPO_PROFILE). Executed copies and a
# summary go to outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false MPLBACKEND=${MPLBACKEND:-Agg}
exec .venv/bin/python scripts/run_suite.py "$@"
