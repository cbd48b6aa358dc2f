#!/usr/bin/env bash
# Install the exact Colab T4 stack (grpo_helpers.install.colab_install_plan((7, 5), "full")) into a
# throwaway venv outside the repo, then check every external call of the t4 path against it and
# write tests/t4_api_check.json. ~6 GB of downloads the first time; the venv is reused while the
# plan's digest is unchanged.
#   --if-pins-changed  exit 0 at once when the record matches the current plan and calls (CI);
#                      otherwise run the full check.
# Environment: GRPO_T4_VENV (the venv's folder), PYTHON (the interpreter for it, default python3.11).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
check=$repo/scripts/check_t4_apis.py
host_python=python3
[ -x "$repo/.venv/bin/python" ] && host_python=$repo/.venv/bin/python
[ -x "$repo/.venv/bin/uv" ] && PATH="$repo/.venv/bin:$PATH"  # uv, pinned in requirements.txt
plan() { PYTHONPATH="$repo" "$host_python" "$check" "$@"; }  # standard library only

if [ "${1:-}" = "--if-pins-changed" ]; then
  plan --if-unchanged && exit 0
  echo "T4 API check: running the full check (a few minutes; ~6 GB of downloads on a fresh machine)."
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--if-pins-changed]" >&2
  exit 2
fi

venv=${GRPO_T4_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/grpo-t4-api-check/venv}
stamp=$venv/.grpo-t4-plan
digest=$(plan --digest)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "$venv exists and is not a venv: not replacing it (set GRPO_T4_VENV)." >&2
    exit 2
  fi
  start=$SECONDS
  rm -rf "$venv"
  uv venv -q --python "${PYTHON:-python3.11}" "$venv"
  while IFS= read -r step; do
    eval "args=($step)"  # one step's uv arguments, shell-quoted by --steps
    echo "uv pip install ${args[*]}"
    uv pip install -q --python "$venv/bin/python" "${args[@]}"
  done < <(plan --steps)
  echo "$digest" > "$stamp"
  echo "Installed the T4 stack in $((SECONDS - start)) s: $(du -sh "$venv" | cut -f1) in $venv"
fi

start=$SECONDS
"$venv/bin/python" "$check" --check
echo "Checked in $((SECONDS - start)) s."
if [ -n "$(git -C "$repo" status --porcelain -- tests/t4_api_check.json 2>/dev/null)" ]; then
  echo "tests/t4_api_check.json changed: commit it, so CI skips this check until the pins or calls change."
fi
