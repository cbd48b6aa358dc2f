"""The pi before/after: prompts, replies' programs judged and run in the sandbox, the comparison."""

from __future__ import annotations

import json
import time

from grpo_helpers import data, pi_eval
from fakes import FakeGenerator
from grpo_helpers.generation import SamplingSettings

REPLIES = pi_eval.REFERENCE_PI_REPLIES
CRASH = "```python\nprint(1 / 0)\n```"
LOOP = "```python\nwhile True:\n    pass\n```"
UNFENCED = ("<reasoning>\nA series.\n</reasoning>\n<answer>\n"
            "print(sum(4 * (-1) ** k / (2 * k + 1) for k in range(1000)))\n</answer>")


def test_pi_prompts_bbp_first_each_naming_its_method():
    assert pi_eval.PI_PROMPTS[0].id == "bbp" and "Bailey-Borwein-Plouffe" in pi_eval.PI_PROMPTS[0].text
    assert len({p.method for p in pi_eval.PI_PROMPTS}) == len(pi_eval.PI_PROMPTS) >= 3
    messages = pi_eval.pi_messages(pi_eval.PI_PROMPTS[0])
    assert messages[0] == {"role": "system", "content": data.SYSTEM_PROMPT}  # the system prompt GRPO trained with


def test_scores_a_correct_bbp_program():
    row = pi_eval.score_pi_reply(REPLIES["BBP series (correct)"], asked_method="bbp")
    assert row["has_code"] and row["code_source"] == "fenced" and row["method"] == "bbp" and row["follows_method"]
    assert row["ran_ok"] and row["cheat_reason"] is None
    assert row["digits_correct"] == row["honest_digits"] == 16  # 3.141592653589793
    assert row["stdout"].strip() == "3.141592653589793"


def test_scores_monte_carlo_as_the_wrong_method_with_few_digits():
    row = pi_eval.score_pi_reply(REPLIES["Monte Carlo"], asked_method="bbp")
    assert row["method"] == "monte_carlo" and not row["follows_method"] and row["ran_ok"]
    assert 1 <= row["digits_correct"] <= 4 and row["cheat_reason"] is None


def test_a_math_pi_cheat_prints_pi_but_earns_no_honest_digits():
    row = pi_eval.score_pi_reply(REPLIES["math.pi (cheat)"], asked_method="bbp")
    assert row["ran_ok"] and row["digits_correct"] == 16 and row["honest_digits"] == 0
    assert "math.pi" in row["cheat_reason"] and row["method"] == "library_constant"


def test_no_code_crash_and_timeout():
    none = pi_eval.score_pi_reply("Pi is about 3.14159.")
    assert not none["has_code"] and not none["ran_ok"] and none["digits_correct"] == 0
    crash = pi_eval.score_pi_reply(CRASH)
    assert crash["has_code"] and not crash["ran_ok"] and crash["returncode"] not in (0, None)
    assert "ZeroDivisionError" in crash["stderr"]
    start = time.monotonic()
    loop = pi_eval.score_pi_reply(LOOP, timeout_s=0.5)
    assert loop["timed_out"] and not loop["ran_ok"] and loop["returncode"] is None
    assert time.monotonic() - start < 10


def test_unfenced_program_inside_answer_tags_is_run():
    code, where = pi_eval.extract_program(UNFENCED)
    assert where == "answer_tag" and code.startswith("print(")
    row = pi_eval.score_pi_reply(UNFENCED, asked_method="leibniz")
    assert row["ran_ok"] and row["method"] == "leibniz" and row["follows_method"] and row["digits_correct"] == 3
    assert pi_eval.extract_program("<answer>\n42\n</answer>") == (None, None)


def test_pi_comparison_on_canned_replies(monkeypatch):
    def reply_for(side, question, i):
        if side == "base":
            return REPLIES["Monte Carlo"] if i == 0 else "No idea."
        return REPLIES["BBP series (correct)"] if "Bailey" in question else REPLIES["math.pi (cheat)"]

    fake = FakeGenerator(reply_for)
    monkeypatch.setattr(pi_eval, "generate_completions", fake)
    settings = SamplingSettings(max_new_tokens=16, temperature=0.7, num_samples=2)
    prompts = pi_eval.PI_PROMPTS[:2]
    result = pi_eval.run_pi_comparison("model", "tok", settings, prompts=prompts, lora_request="LORA")
    assert fake.calls[0]["prompts"] == fake.calls[1]["prompts"] and fake.calls[0]["settings"] == settings
    assert [c["use_adapter"] for c in fake.calls] == [False, True]
    rows = result["rows"]
    assert len(rows) == 2 * len(prompts) * 2
    assert {(r["model"], r["prompt_id"], r["sample"]) for r in rows} == {
        (m, p.id, i) for m in ("base", "trained") for p in prompts for i in range(2)}
    table = pi_eval.pi_summary(rows)
    assert table.loc[("bbp", "trained"), "best_honest_digits"] == 16
    assert table.loc[("bbp", "base"), "wrote_code"] == 0.5
    assert table.loc[("machin", "trained"), "cheated"] == 1.0
    pair = pi_eval.representative_pair(rows, "bbp")
    assert pair["trained"]["method"] == "bbp" and pair["base"]["sample"] == 1  # the median: the no-code one
    facts = pi_eval.pi_facts(pair["trained"])
    assert facts["digits of pi right"] == 16 and facts["ran"] == "yes"
    json.dumps(result)  # saveable as is


def test_concurrent_sandboxes_fit_in_half_the_available_memory(monkeypatch):
    seen = []

    class RecordingPool(pi_eval.ThreadPoolExecutor):
        def __init__(self, max_workers):
            seen.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(pi_eval, "ThreadPoolExecutor", RecordingPool)
    monkeypatch.setattr(pi_eval.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(pi_eval.memory_cap, "available_memory_mb", lambda: 2500)
    rows = pi_eval.score_pi_replies([("No code.", None)] * 2, memory_mb=1024)
    monkeypatch.setattr(pi_eval.memory_cap, "available_memory_mb", lambda: 64_000)
    pi_eval.score_pi_replies([("No code.", None)] * 2, memory_mb=1024)
    assert seen == [1, 8]  # 2500 MB available: half of it holds one 1024 MB sandbox; 64 GB: one per core
    assert [r["has_code"] for r in rows] == [False, False]
