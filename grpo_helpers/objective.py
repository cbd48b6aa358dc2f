"""The GRPO objective: group-relative advantages computed by hand, and TRL's own computation to check them against.

`group_advantages` is what notebook 02 teaches; `trl_advantages` asks a real TRL GRPOTrainer (on the
tiny model, on CPU) for the advantages of the same rewards, so the notebook can show they agree.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from . import data, tiny

RewardFunc = Callable[..., list[float]]
ADVANTAGE_EPSILON = 1e-4  # TRL 0.22.2 divides by (std + 1e-4)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _sample_std(values: Sequence[float]) -> float:
    # torch.std's default: the unbiased (n - 1) estimate, as TRL uses it.
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def group_advantages(rewards: Sequence[float], group_size: int, scale_rewards: bool | str = True) -> list[float]:
    """Each reward minus its group's mean, divided by (group std + 1e-4), as TRL 0.22.2 computes it."""
    scale = {True: "group", False: "none"}.get(scale_rewards, scale_rewards)
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be True/'group', 'batch' or False/'none', not {scale_rewards!r}")
    rewards = [float(r) for r in rewards]
    if group_size < 2 or not rewards or len(rewards) % group_size:
        raise ValueError(f"need groups of at least 2 completions; got {len(rewards)} rewards, group_size={group_size}")
    batch_std = _sample_std(rewards)
    advantages = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean = _mean(group)
        if scale == "none":
            advantages += [r - mean for r in group]
        else:
            std = _sample_std(group) if scale == "group" else batch_std
            advantages += [(r - mean) / (std + ADVANTAGE_EPSILON) for r in group]
    return advantages


def _tiny_grpo_trainer(reward_funcs: Sequence[RewardFunc], rows: list[dict[str, Any]], group_size: int,
                       reward_weights: Sequence[float] | None = None, scale_rewards: bool | str = True,
                       model: Any = None, tokenizer: Any = None, output_dir: str = "grpo-probe") -> Any:
    """A real TRL GRPOTrainer on CPU over `rows` (the tiny model unless one is given), for probing TRL."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    if model is None:
        # Plain transformers on CPU: the same path on a laptop, in CI and on a Colab GPU runtime.
        model_dir = tiny.ensure_tiny_model()
        model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    config = GRPOConfig(output_dir=output_dir, use_cpu=True, bf16=False, report_to="none",
                        gradient_checkpointing=False,  # TRL 0.22.2 defaults it to True, which breaks gradients here
                        per_device_train_batch_size=len(rows) * group_size, gradient_accumulation_steps=1,
                        num_generations=group_size, scale_rewards=scale_rewards,
                        reward_weights=list(reward_weights) if reward_weights is not None else None,
                        max_prompt_length=128, max_completion_length=8, save_strategy="no", seed=0)
    return GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=list(reward_funcs), args=config,
                       train_dataset=Dataset.from_list(rows))


def trl_advantages(rewards: Sequence[float], group_size: int, scale_rewards: bool | str = True,
                   model: Any = None, tokenizer: Any = None) -> list[float]:
    """The advantages a real TRL GRPOTrainer computes from these rewards (the tiny model samples)."""
    rewards = [float(r) for r in rewards]
    if group_size < 2 or not rewards or len(rewards) % group_size:
        raise ValueError(f"need groups of at least 2 completions; got {len(rewards)} rewards, group_size={group_size}")

    def preset_reward(prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
        """The rewards we were given, in order (TRL scores the whole generation batch in one call)."""
        return list(rewards)

    rows = [{"prompt": data.format_prompt(f"What is {i} + {i}?")} for i in range(len(rewards) // group_size)]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = _tiny_grpo_trainer([preset_reward], rows, group_size, scale_rewards=scale_rewards,
                                     model=model, tokenizer=tokenizer, output_dir=output_dir)
        # TRL's sampler hands each prompt over group_size times in a row; so do we.
        batch = [row for row in rows for _ in range(group_size)]
        scored = trainer._generate_and_score_completions(batch)
    return [float(a) for a in scored["advantages"]]
