#!/usr/bin/env bash
# Create .venv and install the pinned stack plus grpo_helpers. Idempotent: skips the install when
# requirements.txt and pyproject.toml have not changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
stamp=.venv/.grpo-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  start=$SECONDS
  echo "Installing the pinned stack into .venv (a few minutes the first time)..."
  # --no-deps: requirements.txt is a complete lock (see its header for why).
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
  echo "Installed in $((SECONDS - start)) s."
fi
