"""The Unsloth loading path on the tiny profile: 4-bit bitsandbytes weights, LoRA, generation."""

import pytest

from grpo_helpers import modeling
from grpo_helpers.profiles import PROFILES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from unittest import mock

    # The tiny profile trains in 32-bit (faster on CPU); this is CI's run of the 4-bit path.
    with mock.patch.object(modeling, "model_path", lambda profile: str(tiny_model_dir)):
        return modeling.load_model(PROFILES["tiny"].replace(load_in_4bit=True))


def test_weights_are_4bit_and_only_lora_trains(loaded):
    model, _ = loaded
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds, "the tiny profile must exercise the bitsandbytes 4-bit path"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    counts = modeling.parameter_counts(model)
    assert 0 < counts["trainable_percent"] < 50


def test_reports_memory_and_size(loaded):
    model, _ = loaded
    report = modeling.memory_report(model)
    assert report["device"] == "cpu" and report["process_rss_gb"] > 0
    text = modeling.describe_model(model)
    assert "trainable LoRA" in text and "Memory" in text


def test_generates_from_a_chat_prompt(loaded):
    from grpo_helpers import data
    from grpo_helpers.generation import SamplingSettings, generate_samples

    model, tokenizer = loaded
    assert tokenizer.padding_side == "right"  # Unsloth loads the tokenizer for training: padding on the right
    prompts = [data.format_prompt("Ava has 3 apples and buys 4 more. How many?"), data.format_prompt("What is 5 * 6?")]
    samples = generate_samples(model, tokenizer, prompts, SamplingSettings(max_new_tokens=8, temperature=1.0, num_samples=2))
    assert len(samples) == 2 and all(len(s) == 2 and all(isinstance(t, str) for t in s) for s in samples)
    greedy = SamplingSettings(max_new_tokens=8)
    first = generate_samples(model, tokenizer, prompts, greedy)
    assert first == generate_samples(model, tokenizer, prompts, greedy)  # greedy is reproducible
    assert tokenizer.padding_side == "right"  # generation pads on the left only inside the call, then restores it


def test_t4_load_without_gpu_is_a_clear_error(monkeypatch):
    from grpo_helpers import runtime

    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    with pytest.raises(runtime.GPURequiredError, match="T4"):
        modeling.load_model(PROFILES["t4"])
