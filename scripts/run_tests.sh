#!/usr/bin/env bash
# The test command: set up .venv; rehearse the Colab install plan against Colab's published images;
# check the T4 stack's APIs when the pins or our calls changed; then run the unit tests and execute
# every notebook (nbmake, in file order) on the tiny profile. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"  # uv, pinned in requirements.txt
echo "== The Colab install plan, rehearsed against each Colab image (package index metadata only)"
.venv/bin/python scripts/colab_rehearsal.py
echo "== The T4 stack's APIs (the full check runs only when the pins or our calls changed)"
bash scripts/check_t4_apis.sh --if-pins-changed
export GRPO_PROFILE=tiny
export GRPO_ARTIFACTS=${GRPO_ARTIFACTS:-$(mktemp -d -t grpo-artifacts-XXXX)}
if [ -z "${GSM8K_DIR:-}" ] && [ -f ../shared/data/gsm8k/test.jsonl ]; then
  export GSM8K_DIR=$(cd ../shared/data/gsm8k && pwd)
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
echo "== Tests: profile=$GRPO_PROFILE artifacts=$GRPO_ARTIFACTS GSM8K_DIR=${GSM8K_DIR:-<synthetic>}"
exec .venv/bin/python -m pytest tests notebooks --nbmake --nbmake-timeout=1800 "$@"
