"""Time GRPO steps of our pipeline against a plain TRL GRPOTrainer, same tiny model/data/settings.

Ours: the model loaded through Unsloth (modeling.load_model), our trainer (training.build_trainer)
with the live-metrics callback writing metrics.csv and redrawing the curves. Plain: transformers +
PEFT + trl.GRPOTrainer with the same GRPOConfig values and reward functions, no callback.
Both runs alternate in one process (A B A B ...) so machine noise hits them alike.

    python benchmarks/bench_training.py [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

os.environ.setdefault("GRPO_ARTIFACTS", tempfile.mkdtemp(prefix="bench-training-"))

from grpo_helpers import grpo_config, modeling, rewards, tiny, training  # noqa: E402  (modeling imports Unsloth first)
from grpo_helpers.data import load_gsm8k  # noqa: E402
from grpo_helpers.profiles import PROFILES  # noqa: E402


def seconds_per_step(trainer, steps: int) -> float:
    """Mean wall time of steps 2..N (the first step includes one-off warm-up)."""
    from transformers import TrainerCallback

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the Trainer prints every log
        trainer.train()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.mean(gaps)


def ours(profile, train_set, steps: int, redraw_every_s: float):
    model, tokenizer = modeling.load_model(profile)
    # The watch scores held-out questions between steps: off here, so the figure is the step itself.
    trainer = training.build_trainer(model, tokenizer, train_set, profile.replace(watch_questions=0),
                                     redraw_every_s=redraw_every_s, max_steps=steps, save_strategy="no")
    return seconds_per_step(trainer, steps)


def plain_trl(profile, train_set, steps: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    path = modeling.model_path(profile)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model = get_peft_model(model, LoraConfig(r=profile.lora_rank, lora_alpha=profile.lora_alpha,
                                             target_modules=list(profile.lora_target_modules), task_type="CAUSAL_LM"))
    config = grpo_config.build_grpo_config(profile, tempfile.mkdtemp(), rewards.DEFAULT_REWARD_WEIGHTS,
                                        max_steps=steps, save_strategy="no")
    training.align_sampling_defaults(model, config)  # same sampling as ours, or the comparison is unfair
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=rewards.DEFAULT_REWARDS,
                          args=config, train_dataset=train_set)
    return seconds_per_step(trainer, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redraw-every-s", type=float, default=15.0)
    args = parser.parse_args()
    profile = PROFILES["tiny"]
    tiny.ensure_tiny_model(spec=tiny.TinySpec(warm_start_steps=profile.warm_start_steps))
    train_set = load_gsm8k("train", profile)
    results: dict[str, list[float]] = {"ours": [], "plain TRL": []}
    for round_ in range(args.rounds):
        results["ours"].append(ours(profile, train_set, args.steps, args.redraw_every_s))
        results["plain TRL"].append(plain_trl(profile, train_set, args.steps))
        print(f"round {round_ + 1}: ours {results['ours'][-1]:.3f} s/step, plain TRL {results['plain TRL'][-1]:.3f} s/step", flush=True)
    ours_s, plain_s = statistics.median(results["ours"]), statistics.median(results["plain TRL"])
    print(f"\nGRPO step time on the tiny profile ({args.steps} steps x {args.rounds} rounds, median of rounds):")
    print(f"  ours       {ours_s:.3f} s/step")
    print(f"  plain TRL  {plain_s:.3f} s/step")
    print(f"  ratio ours / plain TRL = {ours_s / plain_s:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
