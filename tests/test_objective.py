"""The GRPO objective: advantages and the loss (its value and gradient) by hand, and the same from TRL's trainer."""

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

    # Without a model given, the notebook's path: plain transformers on the untrained tiny build, in its own folder.
    monkeypatch.setenv("GRPO_ARTIFACTS", str(tiny_model_dir.parent))
    assert objective.trl_advantages(group, 6) == pytest.approx(group_advantages(group, 6), abs=1e-5)


# --- the loss: by hand on numbers small enough to check in one's head --------------------------------

def test_each_loss_type_weighs_tokens_as_trl_0_22_2_does():
    # A right answer of 1 token (advantage +1) and a wrong one of 3 tokens (advantage -1), ratio 1, no KL:
    # every token's loss is -A, so the answers contribute -1 x 1 token and +1 x 3 tokens.
    logps = [[-1.0], [-2.0, -0.5, -3.0]]
    args = (logps, logps, None, [1.0, -1.0])
    by_type = {t: objective.grpo_loss_by_hand(*args, t, 0.2, 0.0, 4) for t in objective.LOSS_TYPES}
    assert by_type["grpo"] == pytest.approx(0.0)  # (-1/1 + 3/3) / 2: the long wrong answer counts once, not 3x
    assert by_type["dapo"] == pytest.approx(0.5) and by_type["bnpo"] == pytest.approx(0.5)  # (-1 + 3) / 4 tokens
    assert by_type["dr_grpo"] == pytest.approx(0.25)  # (-1 + 3) / (2 answers x 4 = max_completion_length)
    assert objective.token_weights([1, 3], "dapo", 4, batch_tokens=8) == [1 / 8, 1 / 8]  # the generation batch's
    assert objective.token_weights([1, 3], "dapo", 4, batch_tokens=8, num_processes=2) == [1 / 4, 1 / 4]
    assert objective.token_weights([1, 3], "grpo", 4, gradient_accumulation_steps=2) == [1 / 4, 1 / 12]
    with pytest.raises(ValueError, match="loss_type must be one of grpo, bnpo, dr_grpo, dapo"):
        objective.token_weights([1], "sum", 4)


def test_the_clip_and_the_k3_kl_by_hand():
    up, eps = math.log(1.5), 0.2  # the policy made this token 1.5x as likely as when it was sampled
    assert objective.token_loss(up, 0.0, None, 1.0, eps, 0.0) == pytest.approx(-1.2)  # clipped at 1 + eps
    assert objective.token_loss_grad(up, 0.0, None, 1.0, eps, 0.0) == 0.0  # and no gradient
    assert objective.token_loss(up, 0.0, None, -1.0, eps, 0.0) == pytest.approx(1.5)  # min picks the unclipped
    assert objective.token_loss_grad(up, 0.0, None, -1.0, eps, 0.0) == pytest.approx(1.5)
    assert objective.token_loss_grad(-0.3, -0.3, None, 2.0, eps, 0.0) == -2.0  # ratio 1: the plain -A
    kl = math.exp(-0.5) - (-0.5) - 1  # ref - logp = -0.5
    assert objective.token_loss(0.0, 0.0, -0.5, 0.0, eps, 0.1) == pytest.approx(0.1 * kl)
    assert objective.token_loss(-1.0, -1.0, -1.0, 0.0, eps, 0.1) == 0.0  # policy = reference: no KL
    # DAPO's clip-higher, epsilon_high = 0.28: the ratio is kept within [1 - 0.2, 1 + 0.28]
    inside = math.log(1.25)
    assert objective.token_loss(inside, 0.0, None, 1.0, eps, 0.0, 0.28) == pytest.approx(-1.25)  # not clipped
    assert objective.token_loss_grad(inside, 0.0, None, 1.0, eps, 0.0, 0.28) == pytest.approx(-1.25)
    assert objective.token_loss(up, 0.0, None, 1.0, eps, 0.0, 0.28) == pytest.approx(-1.28)  # clipped at 1.28
    assert objective.clipped(1.25, 1.0, eps) and not objective.clipped(1.25, 1.0, eps, 0.28)
    assert objective.token_loss(math.log(0.7), 0.0, None, -1.0, eps, 0.0, 0.28) == pytest.approx(0.8)  # 1 - eps


# --- the same loss from TRL's GRPOTrainer, one real batch of the tiny model --------------------------

# float32 on CPU: the two forward passes (TRL's keeps only the completion logits) round differently, ~1e-8 on
# a loss of ~0.2 and ~2e-6 relative on the gradient measured. The bounds sit 100x above that and far below
# what a wrong term would show: dapo vs dr_grpo differ by ~25%, beta x KL adds ~2.5e-4 to the loss.
LOSS_TOLERANCE, GRADIENT_TOLERANCE = 1e-6, 1e-4


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """The warm-started tiny Llama with a moved LoRA adapter; built in the folder test_training's fixture uses."""
    return objective.tiny_policy(model_dir=tmp_path_factory.getbasetemp() / "warm-tiny-llama")


@pytest.mark.slow
@pytest.mark.parametrize("loss_type, beta, second_pass_lr, epsilon_high", [
    *[(t, 0.0, None, None) for t in objective.LOSS_TYPES], ("dapo", 0.04, None, None), ("dapo", 0.0, 3e-3, None),
    ("grpo", 0.04, 3e-3, None), ("dapo", 0.0, 3e-3, 0.28)])
def test_the_loss_by_hand_matches_trl(policy, loss_type, beta, second_pass_lr, epsilon_high):
    model, tokenizer = policy
    check = objective.trl_loss_check(model, tokenizer, objective.probe_rows(2), 4, loss_type, 0.2, beta, 0.6, 48,
                                     second_pass_lr=second_pass_lr, epsilon_high=epsilon_high)
    assert len(set(check.lengths)) > 2 and any(check.advantages)  # answers of different lengths, a real signal
    assert abs(check.trl_loss - check.by_hand) < LOSS_TOLERANCE
    assert check.grad_gap < GRADIENT_TOLERANCE
    assert check.clip_fraction == pytest.approx(check.trl_clip_fraction, abs=1e-6)
    if second_pass_lr:  # one update later the ratio has moved and the clip takes over on some tokens
        assert check.ratio_range[0] < 1 - 0.2 and check.ratio_range[1] > 1 + (epsilon_high or 0.2)
        assert check.clip_fraction > 0  # with 0.28, clipped tokens count 1.28 A, not 1.2 A: ~1e-3 on this loss
    else:  # num_iterations=1: exactly 1, not approximately
        assert check.ratio_range == (1.0, 1.0) and check.clip_fraction == 0.0
    if beta:
        assert check.kl > 0 and check.kl == pytest.approx(check.trl_kl, rel=1e-4)
