"""`python -m grpo_helpers train|evaluate|vllm-serve` (also `accelerate launch -m grpo_helpers ...`): grpo_helpers.cli.main.

The arguments are checked first (bad input exits 2 with one line, nothing written); Unsloth's backend then
gets Unsloth imported before the commands import transformers, as the notebooks do.
"""

from .cli import main

raise SystemExit(main())
