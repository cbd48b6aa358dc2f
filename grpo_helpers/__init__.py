"""grpo_helpers: the small shared package behind the GRPO notebooks.

One module, one job (README, "Layout"): profiles, runtime, install, paths, tiny, smollm2, sizes,
modeling, chat_tokens, data, rewards, training, preflight, generation, evaluation, sandbox,
export, plotting.
"""

__version__ = "0.2.0"
