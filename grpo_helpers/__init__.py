"""grpo_helpers: the small shared package behind the GRPO notebooks.

One module, one job (see DESIGN.md): profiles, runtime, install, paths, tiny, modeling, data,
rewards, training, generation, evaluation, sandbox, plotting.
"""

__version__ = "0.2.0"
