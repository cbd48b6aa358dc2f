"""TRL's GRPOConfig from the profile, and a table of every field: what the profile set, what TRL derived.

Notebook 04 shows `config_table(build_grpo_config(profile))` before building the trainer on it."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any, Sequence

from . import backends, paths, rewards
from .generation import uses_vllm
from .modeling import prepare_backend
from .profiles import Profile, ProfileError

# GRPOConfig values that do not change the optimisation (another value: the same run). use_vllm, use_cpu and
# gradient_checkpointing say how a step is computed, not what: falling back from vLLM to HF generate continues it.
BOOKKEEPING = frozenset({
    "output_dir", "max_steps", "logging_steps", "logging_first_step", "logging_strategy", "logging_dir",
    "save_strategy", "save_steps", "save_total_limit", "save_only_model", "report_to", "run_name",
    "disable_tqdm", "dataloader_num_workers", "use_cpu", "use_vllm", "gradient_checkpointing",
    "log_completions", "num_completions_to_print", "push_to_hub", "hub_model_id",
    # the "trl" backend's engine (backends.engine_config_values): where and how generation runs
    "vllm_mode", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_gpu_memory_utilization",
    "ddp_find_unused_parameters",
})


def grpo_config_values(profile: Profile, output_dir: str | Path, reward_weights: Sequence[float] | None = None,
                       model: Any = None) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the profile; TRL's defaults fill the rest. `use_vllm` follows the loaded
    model when one is given (it has a vLLM engine or not), else the profile."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": str(output_dir),
        # the batch and the group
        "per_device_train_batch_size": profile.per_device_train_batch_size, "num_generations": profile.num_generations,
        "gradient_accumulation_steps": profile.gradient_accumulation_steps,
        "max_prompt_length": profile.max_prompt_length, "max_completion_length": profile.max_completion_length,
        "temperature": profile.temperature,
        # the objective (notebook 03)
        "loss_type": profile.loss_type, "epsilon": profile.epsilon, "num_iterations": profile.num_iterations,
        "scale_rewards": profile.scale_rewards, "beta": profile.beta,
        "epsilon_high": profile.epsilon_high, "mask_truncated_completions": profile.mask_truncated_completions,
        "reward_weights": list(reward_weights) if reward_weights is not None else None,
        # the optimizer and its schedule
        "learning_rate": profile.learning_rate, "adam_beta1": profile.adam_beta1, "adam_beta2": profile.adam_beta2,
        "weight_decay": profile.weight_decay, "optim": profile.optim, "max_grad_norm": profile.max_grad_norm,
        "lr_scheduler_type": profile.lr_scheduler_type, "warmup_ratio": profile.warmup_ratio,
        "max_steps": profile.max_steps, "seed": profile.seed,
        "logging_steps": profile.logging_steps, "save_strategy": "steps", "save_steps": profile.save_steps,
        "save_total_limit": profile.save_total_limit, "report_to": "none",
        # how a step is computed
        "fp16": on_gpu and profile.dtype == "float16", "bf16": on_gpu and profile.dtype == "bfloat16",
        "use_cpu": not on_gpu, "dataloader_num_workers": 0,
        "use_vllm": uses_vllm(model) if model is not None else profile.fast_inference,  # the model's own engine
        # Unsloth sets up LoRA checkpointing in get_peft_model; the Trainer's own (reentrant) kind on
        # top of it leaves the loss without gradients under TRL 0.22.2 (its GRPOConfig default is True).
        "gradient_checkpointing": False,
    }


def build_grpo_config(profile: Profile, output_dir: str | Path | None = None,
                      reward_weights: Sequence[float] | None = tuple(rewards.DEFAULT_REWARD_WEIGHTS), *,
                      model: Any = None, **overrides: Any) -> Any:
    """TRL's GRPOConfig for the profile: checkpoints in <artifacts>/<profile>/checkpoints, the default rewards'
    weights (None: TRL's equal ones); an override GRPOConfig lacks is a ProfileError naming the valid ones."""
    prepare_backend(profile)  # Unsloth imported (it patches TRL) for its backend, never for "trl"
    import trl
    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise ProfileError(f"GRPOConfig (TRL {trl.__version__}) has no field {', '.join(map(repr, unknown))}. "
                           f"Valid names: {', '.join(sorted(known))}.")
    output_dir = output_dir if output_dir is not None else paths.checkpoints_dir(profile.name)
    engine = backends.engine_config_values(profile)  # the "trl" backend's: TRL's vLLM, checkpointing, DDP
    return GRPOConfig(**{**grpo_config_values(profile, output_dir, reward_weights, model), **engine, **overrides})


def config_overrides(config: Any, profile: Profile) -> dict[str, Any]:
    """The fields of `config` that differ from the profile's own GRPOConfig: overrides, or changes made since."""
    reference = build_grpo_config(profile, config.output_dir, config.reward_weights, use_vllm=config.use_vllm,
                                  logging_dir=config.logging_dir)  # TRL stamps logging_dir with the time
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.init and getattr(config, f.name) != getattr(reference, f.name)}


def plain_value(value: Any) -> Any:
    """A config value as shown and fingerprinted: enums by their value, containers and objects as text."""
    value = value.value if isinstance(value, enum.Enum) else value
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def config_table(config: Any, profile: Profile) -> Any:
    """Every GRPOConfig field (a DataFrame): its value as built, what grpo_helpers passed, the class default, and
    what set it (the profile, grpo_helpers, an override, or TRL deriving it from the others)."""
    import pandas as pd

    passed = (grpo_config_values(profile, config.output_dir, config.reward_weights)
              | backends.engine_config_values(profile) | {"use_vllm": config.use_vllm})
    changed = config_overrides(config, profile)
    rows = []
    for field in (f for f in dataclasses.fields(config) if f.init):
        name, value = field.name, getattr(config, field.name)
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        set_by = ("override" if name in changed else "profile" if name in passed and hasattr(profile, name) else
                  "grpo_helpers" if name in passed else "TRL, derived" if plain_value(value) != plain_value(default) else "")
        shown = changed.get(name, passed.get(name, "")) if set_by else ""
        rows.append({"field": name, "value": str(plain_value(value)), "passed": str(plain_value(shown)),
                     "default": str(plain_value(default)), "set by": set_by})
    order = {"profile": 0, "grpo_helpers": 1, "override": 2, "TRL, derived": 3, "": 4}
    return pd.DataFrame(rows).set_index("field").sort_values("set by", key=lambda c: c.map(order), kind="stable")
