"""tests/t4_api_check.json (scripts/check_t4_apis.sh writes it): complete and clean; the call derivation it rests on."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "t4_api_check.json"
CORE_CALLS = ("unsloth.FastLanguageModel.from_pretrained", "unsloth.FastLanguageModel.get_peft_model",
              "model.fast_generate", "model.load_lora", "vllm.SamplingParams", "trl.GRPOConfig", "trl.GRPOTrainer",
              "peft.utils.load_peft_weights", "peft.utils.set_peft_model_state_dict", "$UNSLOTH_VLLM_STANDBY")


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_t4_apis", ROOT / "scripts" / "check_t4_apis.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD.read_text())


def test_record_has_its_fields_and_no_failures(record):
    assert {"plan_digest", "uses_digest", "checked_on", "plan", "versions", "verified", "failures"} <= set(record)
    assert record["failures"] == []
    assert all({"call", "uses", "how", "api", "where"} <= set(v) for v in record["verified"])
    assert {v["how"] for v in record["verified"]} <= {"import", "signature", "source"}


def test_record_covers_the_core_calls_with_their_keywords(record):
    verified = {v["call"]: v for v in record["verified"]}
    assert set(CORE_CALLS) <= set(verified)
    assert {"fast_inference", "load_in_4bit", "max_lora_rank", "gpu_memory_utilization"} \
        <= set(verified["unsloth.FastLanguageModel.from_pretrained"]["uses"])


def test_record_versions_are_the_plans_pins(record):
    pins = dict(r.split("==") for step in record["plan"] for r in step.split() if "==" in r)
    for name in ("torch", "vllm", "unsloth", "transformers", "trl", "peft"):
        assert record["versions"][name].split("+")[0] == pins[name], name


def test_derived_calls_see_through_keyword_dicts(check):
    uses = {u.target: u for u in check.derive_uses()}
    from_pretrained = uses["unsloth.FastLanguageModel.from_pretrained"]
    assert {"max_lora_rank", "gpu_memory_utilization"} <= set(from_pretrained.keywords)
    assert {"use_vllm", "fp16", "max_prompt_length"} <= set(uses["trl.GRPOConfig"].keywords)


def test_a_renamed_keyword_changes_the_calls_digest(check, tmp_path):
    (tmp_path / "grpo_helpers").mkdir()
    for name in check.T4_MODULES:
        source = (ROOT / "grpo_helpers" / f"{name}.py").read_text()
        (tmp_path / "grpo_helpers" / f"{name}.py").write_text(source.replace("fast_inference=", "fast_infer="))
    renamed = check.derive_uses(tmp_path)
    assert "fast_infer" in {k for u in renamed for k in u.keywords}
    assert check.uses_digest(renamed, {}) != check.uses_digest(check.derive_uses(), {})
