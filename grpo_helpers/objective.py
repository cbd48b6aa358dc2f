"""The GRPO objective by hand, and TRL's own computation of it to check against (the tiny model, on CPU).

Notebook 02: `group_advantages`, checked by `trl_advantages`. Notebook 03: the loss TRL 0.22.2 minimises,
token by token (`token_loss`: probability ratio, PPO's clip (upper bound 1 + epsilon_high), k3 KL; `token_weights`: what each loss_type
divides by; `grpo_loss_by_hand`, `grpo_grad_by_hand`), checked by `trl_loss_check` on one real batch.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, paths, tiny
from .profiles import LLAMA_PROJECTIONS, TINY
from .rewards import DEFAULT_REWARD_WEIGHTS, DEFAULT_REWARDS

RewardFunc = Callable[..., list[float]]
ADVANTAGE_EPSILON = 1e-4  # TRL 0.22.2 divides by (std + 1e-4)
# The untrained tiny Llama (seconds to build) for the advantage probe, apart from the warm-started one the
# tiny profile trains (<artifacts>/tiny-llama), so neither build replaces the other in the cache.
UNTRAINED_TINY_DIR = "tiny-llama-untrained"


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
                       model: Any = None, tokenizer: Any = None, output_dir: str = "grpo-probe",
                       **settings: Any) -> Any:
    """A real TRL GRPOTrainer on CPU over `rows` (the tiny model unless one is given), for probing TRL.

    `settings` are further GRPOConfig fields (loss_type, beta, epsilon, ...) over the probe's defaults."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    if model is None:
        # Plain transformers on CPU: the same path on a laptop, in CI and on a Colab GPU runtime.
        model_dir = tiny.ensure_tiny_model(paths.artifacts_dir() / UNTRAINED_TINY_DIR)
        model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    probe = dict(output_dir=output_dir, use_cpu=True, bf16=False, report_to="none",
                 gradient_checkpointing=False,  # TRL 0.22.2 defaults it to True, which breaks gradients here
                 per_device_train_batch_size=len(rows) * group_size, gradient_accumulation_steps=1,
                 num_generations=group_size, scale_rewards=scale_rewards,
                 reward_weights=list(reward_weights) if reward_weights is not None else None,
                 max_prompt_length=128, max_completion_length=8, save_strategy="no", seed=0)
    config = GRPOConfig(**{**probe, **settings})
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


# --- the loss: per-token ratio, clip, k3 KL, and what each loss_type divides by ----------------------

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")  # the ones TRL 0.22.2's _compute_loss implements


def per_token_logps(model: Any, input_ids: Any, attention_mask: Any, completion_length: int,
                    temperature: float) -> Any:
    """log pi(token | all before it) of the last `completion_length` tokens, logits divided by the temperature."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, -completion_length - 1:-1, :].float() / temperature  # position t predicts token t + 1
    targets = input_ids[:, -completion_length:].unsqueeze(-1)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)


def masked_rows(values: Any, mask: Any) -> list[list[float]]:
    """Each row's values where the mask is 1 (one answer's real tokens), as plain floats."""
    return [[float(v) for v, m in zip(row, row_mask) if m] for row, row_mask in zip(values.tolist(), mask.tolist())]


def clipped(ratio: float, advantage: float, epsilon: float, epsilon_high: float | None = None) -> bool:
    """True when PPO's clip takes over: the ratio left [1 - eps, 1 + eps_high] on the side the advantage pushes it to.

    epsilon_high: the upper bound's own epsilon (DAPO's clip-higher); None: epsilon, as TRL 0.22.2 defaults it."""
    high = epsilon if epsilon_high is None else epsilon_high
    return (ratio > 1 + high and advantage > 0) or (ratio < 1 - epsilon and advantage < 0)


def token_loss(logp: float, old_logp: float, ref_logp: float | None, advantage: float, epsilon: float,
               beta: float, epsilon_high: float | None = None) -> float:
    """One token's loss: -min(r A, clip(r, 1 - eps, 1 + eps_high) A) + beta * k3 KL, with r = pi / pi_old."""
    ratio = math.exp(logp - old_logp)
    high = epsilon if epsilon_high is None else epsilon_high
    surrogate = min(ratio * advantage, min(max(ratio, 1 - epsilon), 1 + high) * advantage)
    kl = math.exp(ref_logp - logp) - (ref_logp - logp) - 1 if beta else 0.0
    return -surrogate + beta * kl


def token_loss_grad(logp: float, old_logp: float, ref_logp: float | None, advantage: float, epsilon: float,
                    beta: float, epsilon_high: float | None = None) -> float:
    """d token_loss / d logp: -r A while the clip is off (0 once it takes over), plus beta * (1 - exp(ref - logp))."""
    ratio = math.exp(logp - old_logp)
    policy = 0.0 if clipped(ratio, advantage, epsilon, epsilon_high) else -ratio * advantage
    return policy + (beta * (1 - math.exp(ref_logp - logp)) if beta else 0.0)


def token_weights(lengths: Sequence[int], loss_type: str, max_completion_length: int,
                  batch_tokens: int | None = None, num_processes: int = 1,
                  gradient_accumulation_steps: int = 1) -> list[float]:
    """The weight each token of each answer gets in the loss (one number per answer), per TRL 0.22.2's loss_type.

    `batch_tokens` (dapo): completion tokens of the whole generation batch, over every process and accumulation
    step; default, this batch's. What `compute_loss` returns; the Trainer then divides by
    gradient_accumulation_steps once more before backward, for every loss_type."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, not {loss_type!r}")
    answers, tokens = len(lengths), sum(lengths)
    if loss_type == "grpo":  # each answer's mean over its own tokens, then the mean over answers
        weights = [1 / (answers * max(n, 1)) for n in lengths]
    elif loss_type == "bnpo":  # the mean over this micro-batch's tokens
        weights = [1 / max(tokens, 1)] * answers
    elif loss_type == "dr_grpo":  # a constant: every answer as if it were max_completion_length long
        weights = [1 / (answers * max_completion_length)] * answers
    else:  # dapo: the mean over every token of the generation batch; not divided by accumulation steps here
        return [num_processes / (batch_tokens if batch_tokens is not None else tokens)] * answers
    return [w / gradient_accumulation_steps for w in weights]


def grpo_loss_by_hand(logps: list[list[float]], old_logps: list[list[float]], ref_logps: list[list[float]] | None,
                      advantages: Sequence[float], loss_type: str, epsilon: float, beta: float,
                      max_completion_length: int, epsilon_high: float | None = None, **normalisation: int) -> float:
    """GRPO's loss from per-token log-probs (a list per answer, real tokens only), as TRL's compute_loss returns it."""
    weights = token_weights([len(row) for row in logps], loss_type, max_completion_length, **normalisation)
    refs = ref_logps or [[0.0] * len(row) for row in logps]
    return sum(weight * token_loss(lp, old, ref, advantage, epsilon, beta, epsilon_high)
               for row, old_row, ref_row, advantage, weight in zip(logps, old_logps, refs, advantages, weights)
               for lp, old, ref in zip(row, old_row, ref_row))


def grpo_grad_by_hand(logps: list[list[float]], old_logps: list[list[float]], ref_logps: list[list[float]] | None,
                      advantages: Sequence[float], loss_type: str, epsilon: float, beta: float,
                      max_completion_length: int, epsilon_high: float | None = None,
                      **normalisation: int) -> list[list[float]]:
    """d loss / d log-prob of every token: what the backward pass hands each token's log-prob."""
    weights = token_weights([len(row) for row in logps], loss_type, max_completion_length, **normalisation)
    refs = ref_logps or [[0.0] * len(row) for row in logps]
    return [[weight * token_loss_grad(lp, old, ref, advantage, epsilon, beta, epsilon_high)
             for lp, old, ref in zip(row, old_row, ref_row)]
            for row, old_row, ref_row, advantage, weight in zip(logps, old_logps, refs, advantages, weights)]


# --- the same loss from TRL: one real batch of the tiny model ----------------------------------------

@dataclass(frozen=True)
class LossCheck:
    """One batch's loss as TRL's GRPOTrainer.compute_loss returns it, beside the same loss by hand."""

    loss_type: str
    beta: float
    second_pass: bool  # num_iterations=2: the batch's second pass, one update after it was sampled
    trl_loss: float
    by_hand: float
    grad_gap: float  # max |TRL's LoRA gradient - ours| / max |TRL's|
    trl_clip_fraction: float  # TRL's logged clip_ratio/region_mean
    clip_fraction: float  # ours: share of tokens where the clip took over
    ratio_range: tuple[float, float]  # the smallest and largest pi / pi_old of the batch's tokens
    trl_kl: float | None  # TRL's logged mean KL (beta > 0 only)
    kl: float | None  # ours: mean k3 over the batch's tokens
    lengths: tuple[int, ...]  # each answer's real tokens (up to and including its end-of-turn)
    advantages: tuple[float, ...]

    def row(self) -> dict[str, Any]:
        """The check as one table row: settings, both losses and their gap, the gradient gap, ratios, clip, KL."""
        return {"loss_type": self.loss_type, "beta": self.beta, "pass": "second" if self.second_pass else "first",
                "TRL loss": self.trl_loss, "by hand": self.by_hand, "|TRL - by hand|": abs(self.trl_loss - self.by_hand),
                "gradient gap": self.grad_gap, "ratio min": self.ratio_range[0], "ratio max": self.ratio_range[1],
                "clip, TRL": self.trl_clip_fraction, "clip, by hand": self.clip_fraction,
                "KL, TRL": self.trl_kl, "KL, by hand": self.kl}


def tiny_policy(lora_rank: int = 8, moved_by: float = 0.05, seed: int = 0,
                model_dir: str | Path | None = None) -> tuple[Any, Any]:
    """The tiny Llama as the tiny profile trains it, with a LoRA adapter already moved off zero (policy != reference).

    Its warm start makes it end answers at different lengths, which is where the loss types differ."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny.ensure_tiny_model(model_dir, spec=tiny.TinySpec(warm_start_steps=TINY.warm_start_steps))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(LLAMA_PROJECTIONS),
                                      task_type="CAUSAL_LM"))
    # Sample at the config's top_p/top_k, not the model's own defaults (as training.align_sampling_defaults does).
    model.generation_config.top_p, model.generation_config.top_k = 1.0, 0
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fresh adapter is exactly the base model (B = 0): move it, as training would
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * moved_by)
    return model, tokenizer


def probe_rows(questions: int, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic GSM8K questions as TRL's dataset rows: the chat prompt and the gold answer."""
    return [{"prompt": data.format_prompt(row["question"]), "answer": data.extract_hash_answer(row["answer"])}
            for row in data.synthetic_gsm8k(questions, seed=seed)]


def trl_loss_check(model: Any, tokenizer: Any, rows: list[dict[str, Any]], group_size: int, loss_type: str,
                   epsilon: float, beta: float, temperature: float, max_completion_length: int,
                   scale_rewards: str = "group", second_pass_lr: float | None = None, seed: int = 0,
                   epsilon_high: float | None = None) -> LossCheck:
    """Sample one batch with a real TRL GRPOTrainer, take its compute_loss and gradient, and compute both by hand.

    `second_pass_lr`: num_iterations=2; one Adam step at this learning rate on the batch, then the check runs on
    the same batch again, as TRL's second pass over it would (the ratio moves off 1 and the clip can take over).
    `epsilon_high`: the clip's upper epsilon, GRPOConfig.epsilon_high (None: epsilon, TRL's default)."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in trainable]
    settings = dict(loss_type=loss_type, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta, temperature=temperature, seed=seed,
                    max_completion_length=max_completion_length, max_prompt_length=TINY.max_prompt_length,
                    num_iterations=2 if second_pass_lr else 1)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = _tiny_grpo_trainer(DEFAULT_REWARDS, rows, group_size, DEFAULT_REWARD_WEIGHTS, scale_rewards,
                                     model, tokenizer, output_dir, **settings)
        trainer.current_gradient_accumulation_steps = 1  # the Trainer's loop sets it; compute_loss divides by it
        model.train()
        try:
            inputs = trainer._generate_and_score_completions([row for row in rows for _ in range(group_size)])
            if second_pass_lr:
                optimizer = torch.optim.Adam(trainable, lr=second_pass_lr)
                trainer.compute_loss(model, inputs).backward()
                optimizer.step()
                model.zero_grad()
            trl_loss = trainer.compute_loss(model, inputs)
            trl_loss.backward()
            trl_grads = [p.grad.detach().clone() for p in trainable]
            model.zero_grad()
            check = _by_hand(model, inputs, trainer._metrics["train"], trl_grads, loss_type, epsilon, epsilon_high,
                             beta, temperature, max_completion_length, float(trl_loss.detach()), bool(second_pass_lr))
        finally:
            with torch.no_grad():
                for param, value in zip(trainable, saved):
                    param.copy_(value)
            model.zero_grad()
            model.eval()
    return check


def _by_hand(model: Any, inputs: dict[str, Any], metrics: dict[str, list[float]], trl_grads: list[Any],
             loss_type: str, epsilon: float, epsilon_high: float | None, beta: float, temperature: float,
             max_completion_length: int, trl_loss: float, second_pass: bool) -> LossCheck:
    """The LossCheck of a scored TRL batch: log-probs from our own forward pass, the loss and gradient by hand."""
    import torch

    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    mask, width = inputs["completion_mask"], inputs["completion_ids"].size(1)
    logps_tensor = per_token_logps(model, input_ids, attention_mask, width, temperature)
    logps = masked_rows(logps_tensor.detach(), mask)
    # num_iterations=1: TRL stores no old log-probs and uses the current ones, detached: the ratio is exactly 1.
    old = masked_rows(inputs["old_per_token_logps"], mask) if "old_per_token_logps" in inputs else logps
    ref = None
    if beta:
        with torch.no_grad(), model.disable_adapter():  # the reference: the base model, adapter off
            ref = masked_rows(per_token_logps(model, input_ids, attention_mask, width, temperature), mask)
    advantages = [float(a) for a in inputs["advantages"]]
    args = (logps, old, ref, advantages, loss_type, epsilon, beta, max_completion_length, epsilon_high)
    grads = grpo_grad_by_hand(*args)
    grad_tensor = torch.zeros_like(logps_tensor)
    grad_tensor[mask.bool()] = torch.tensor([g for row in grads for g in row], dtype=grad_tensor.dtype)
    # The chain rule: d loss / d weights = sum over tokens of (d loss / d logp) x (d logp / d weights).
    (grad_tensor * logps_tensor).sum().backward()
    ours = [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    gap = max(float((a - b).abs().max()) for a, b in zip(trl_grads, ours))
    scale = max(float(a.abs().max()) for a in trl_grads) or 1.0
    tokens = [(math.exp(lp - o), a) for row, old_row, a in zip(logps, old, advantages) for lp, o in zip(row, old_row)]
    kls = [math.exp(r - lp) - (r - lp) - 1 for row, ref_row in zip(logps, ref or []) for lp, r in zip(row, ref_row)]
    return LossCheck(
        loss_type=loss_type, beta=beta, second_pass=second_pass, trl_loss=trl_loss,
        by_hand=grpo_loss_by_hand(*args), grad_gap=gap / scale,
        trl_clip_fraction=metrics["clip_ratio/region_mean"][-1],
        clip_fraction=sum(clipped(r, a, epsilon, epsilon_high) for r, a in tokens) / len(tokens),
        ratio_range=(min(r for r, _ in tokens), max(r for r, _ in tokens)),
        trl_kl=metrics["kl"][-1] if beta else None, kl=sum(kls) / len(kls) if beta else None,
        lengths=tuple(len(row) for row in logps), advantages=tuple(advantages))
