"""The GRPO objective: group-relative advantages by hand, and the same numbers from TRL's trainer."""

from __future__ import annotations

import math

import pytest

from grpo_helpers import data, objective
from grpo_helpers.objective import group_advantages
from grpo_helpers.rewards import DEFAULT_REWARD_WEIGHTS, DEFAULT_REWARDS

REWARD_NAMES = [f.__name__ for f in DEFAULT_REWARDS]


def test_group_advantages_by_hand():
    # rewards 3, 1, 1, 1: mean 1.5, sample std sqrt(3/3)=1 -> (r - 1.5) / (1 + 1e-4)
    assert group_advantages([3, 1, 1, 1], 4) == pytest.approx([x / 1.0001 for x in (1.5, -0.5, -0.5, -0.5)])
    assert group_advantages([2, 2, 2, 2], 2) == [0.0] * 4  # no spread, no signal
    assert group_advantages([3, 1, 0, 0], 2, scale_rewards=False) == [1.0, -1.0, 0.0, 0.0]
    assert group_advantages([3, 1, 0, 0], 2, scale_rewards="none") == [1.0, -1.0, 0.0, 0.0]
    batch_std = math.sqrt(sum((r - 1.0) ** 2 for r in [3, 1, 0, 0]) / 3)
    assert group_advantages([3, 1, 0, 0], 2, scale_rewards="batch")[0] == pytest.approx(1 / (batch_std + 1e-4))
    for bad in [([1, 2, 3], 2), ([1], 1), ([], 2)]:
        with pytest.raises(ValueError):
            group_advantages(*bad)
    with pytest.raises(ValueError):
        group_advantages([1, 2], 2, scale_rewards="max")


# --- TRL's own advantage computation -----------------------------------------------------------------

@pytest.mark.slow
# The session's tiny-model fixture has imported transformers already; on CPU the order changes nothing.
@pytest.mark.filterwarnings("ignore:WARNING. Unsloth should be imported before")
def test_group_advantages_match_trl_and_trl_accepts_the_default_rewards(tiny_model_dir, monkeypatch):
    import unsloth  # noqa: F401  (before trl, as Unsloth asks)
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(str(tiny_model_dir), max_seq_length=256, load_in_4bit=False,
                                                         fast_inference=False)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=False)
    group = [3.5, 2.625, 0.0, 1.5, 3.0, 0.5]
    batch = group + [1.0] * 6  # no spread: 0 / (0 + 1e-4) = 0, not NaN
    for scale in [True, "batch", False]:
        from_trl = objective.trl_advantages(batch, 6, scale_rewards=scale, model=model, tokenizer=tokenizer)
        assert from_trl == pytest.approx(group_advantages(batch, 6, scale_rewards=scale), abs=1e-5), scale

    # The default rewards go through TRL's real scoring path, named as TRL logs them.
    rows = [{"prompt": data.format_prompt("What is 36 + 36?"), "answer": "72"}]
    trainer = objective._tiny_grpo_trainer(DEFAULT_REWARDS, rows, 4, reward_weights=DEFAULT_REWARD_WEIGHTS, model=model,
                                         tokenizer=tokenizer, output_dir=str(tiny_model_dir.parent / "out"))
    scored = trainer._generate_and_score_completions(rows * 4)
    assert scored["advantages"].shape == (4,)
    assert trainer.reward_weights.tolist() == DEFAULT_REWARD_WEIGHTS
    logged = trainer._metrics["train"]
    assert all(f"rewards/{name}/mean" in logged for name in REWARD_NAMES)

    # Without a model given, the notebook's path: plain transformers on the cached tiny build.
    monkeypatch.setenv("GRPO_ARTIFACTS", str(tiny_model_dir.parent))
    assert objective.trl_advantages(group, 6) == pytest.approx(group_advantages(group, 6), abs=1e-5)
