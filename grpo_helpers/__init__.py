"""grpo_helpers: the small shared package behind the GRPO notebooks.

One module, one job (README, "Layout"). Set-up: profiles, runtime, install, paths, tiny, smollm2,
sizes, modeling, backends, chat_tokens, data. Rewards and objective: answers, rewards, objective.
Training: grpo_config, training, checkpoints, callbacks, watch, preflight. Measuring: generation,
evaluation, pi_programs, pi_eval, results_card, plotting, export. The sandbox: sandbox, isolation,
memory_cap, syscall_filter, sandbox_uid. The command line: cli, commands, __main__.
"""

__version__ = "0.3.0"
