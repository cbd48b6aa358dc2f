"""`python -m grpo_helpers train|evaluate|vllm-serve` (also `accelerate launch -m grpo_helpers ...`).

The arguments are checked first (grpo_helpers.cli: bad input exits 2 with one line, nothing written);
Unsloth's backend then gets Unsloth imported before the commands import transformers, as the notebooks do.
"""

import sys

from .cli import parse_or_exit, prepare_engine

ARGS, PROFILE = parse_or_exit(sys.argv[1:])
prepare_engine(ARGS, PROFILE)

from .commands import run  # noqa: E402  (after Unsloth, which patches transformers and TRL on import)

raise SystemExit(run(ARGS, PROFILE))
