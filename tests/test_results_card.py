"""The results card: built from saved results files with known numbers, and checked (stale, edited, missing parts)."""

import json

import pytest

from grpo_helpers import callbacks, data, evaluation, modeling, paths, pi_eval, results_card, watch
from grpo_helpers.generation import Completion, SamplingSettings
from grpo_helpers.profiles import PROFILES

TINY = PROFILES["tiny"]
RIGHT, WRONG = data.format_completion("x", "4"), data.format_completion("x", "5")


def _compare(monkeypatch, base_right, trained_right, n=20, samples=1):
    """compare_before_after on n questions whose answers are scripted: right where the sets say so."""
    dataset = [{"prompt": data.format_prompt(f"question {i}"), "question": f"question {i}", "answer": "4"}
               for i in range(n)]

    def fake(model, tokenizer, prompts, settings, batch_size=16, lora_request=None, use_adapter=True):
        right = trained_right if use_adapter else base_right
        return [[Completion(RIGHT if (i, s) in right or i in right else WRONG, 5, False)
                 for s in range(settings.num_samples)] for i in range(len(prompts))]

    monkeypatch.setattr(evaluation, "generate_completions", fake)
    settings = SamplingSettings(max_new_tokens=8, temperature=0.0 if samples == 1 else 0.6, num_samples=samples)
    return evaluation.compare_before_after(None, None, dataset, settings)


def _pi_rows():
    rows = []
    for side in evaluation.SIDES:
        for prompt in pi_eval.PI_PROMPTS:
            rows.append({"prompt_id": prompt.id, "model": side, "sample": 0, "has_code": side == "trained",
                         "ran_ok": side == "trained", "follows_method": False, "cheat_reason": None,
                         "digits_correct": 3 if side == "trained" else 0, "honest_digits": 0, "method": None})
    return rows


@pytest.fixture()
def saved_run(artifacts, monkeypatch):
    """What notebooks 04 and 05 leave behind, with known numbers: 8/20 -> 13/20 strict, 6 fixed and 1 broken."""
    adapter = paths.adapter_dir(TINY.name)
    adapter.mkdir(parents=True)
    (adapter / modeling.ADAPTER_INFO_FILE).write_text(json.dumps({
        "profile": "tiny", "base_model": "grpo-tiny-llama", "global_step": 10, "max_steps": 10, "run_id": "abc",
        "run": {"lora": {"rank": 16}}, "saved_at": "2026-01-01 00:00:00"}))
    metrics = paths.profile_dir(TINY.name) / callbacks.METRICS_FILE
    for step in range(1, 11):
        callbacks.append_metric_rows(metrics, step, step / 10, {"reward": step / 10})
    for step, strict in ((0, 0.25), (5, 0.5), (10, 0.75)):
        callbacks.append_metric_rows(metrics, step, step / 10, {"eval/strict_accuracy": strict, "eval/format_rate": 0.9,
                                                            "eval/lenient_accuracy": 0.8, watch.WATCH_SECONDS: 1.5})
    callbacks.append_metric_rows(metrics, 2, 0.2, {"train_runtime": 3.0})
    callbacks.append_metric_rows(metrics, 10, 1.0, {"train_runtime": 40.0})
    result = _compare(monkeypatch, set(range(8)), set(range(7)) | set(range(8, 14)))
    evaluation.save_results(result, evaluation.results_path(TINY))
    evaluation.save_results({"rows": _pi_rows()}, evaluation.results_path(TINY, pi_eval.PI_RESULTS_FILE))
    return result


def test_the_card_says_what_was_learned(saved_run):
    path = results_card.write_card(TINY)
    assert path == paths.profile_dir("tiny") / "results.md" and path.with_name("results.png").is_file()
    text = path.read_text()
    assert "| GRPO steps | 10 of 10 |" in text
    assert "| training time | 43 s (the Trainer's train_runtime, 2 session(s)) |" in text
    assert "| model | grpo-tiny-llama + LoRA r=16 |" in text
    assert "| strict_accuracy | 40.0% | 21.9%-61.3% | 65.0% | 43.3%-81.9% | +25.0 pts |" in text
    assert "| 6 | 1 | 0.125 |" in text and "not distinguishable from noise" in text
    assert "| 0 | - | 25.0% | 80.0% | 90.0% |" in text and "| 10 | 0.800 | 75.0% | 80.0% | 90.0% |" in text
    assert "(3 watches, 4 s in all)" in text
    assert "| bbp | trained | 1 | 1.0 | 1.0 | 0.0 | 0.0 | 3.0 | 0 | no code x1 |" in text
    results_card.check_card(TINY)
    summary = results_card.card_summary(path)
    assert summary.startswith(results_card.RUN_HEADING) and "| strict_accuracy | 40.0%" in summary
    assert results_card.PI_HEADING not in summary


def test_a_sampled_comparison_gets_its_own_table(saved_run, monkeypatch):
    picks = {(i, 0) for i in range(10)} | {(i, 1) for i in range(10)}  # two of three samples right on 0-9
    sampled = _compare(monkeypatch, {(i, 0) for i in range(10)}, picks, samples=3)
    evaluation.save_results(sampled, evaluation.results_path(TINY, evaluation.GSM8K_SAMPLED_FILE))
    text = results_card.write_card(TINY).read_text()
    sampled_part = text[text.index(results_card.SAMPLED_HEADING):]
    assert "3 samples per question at temperature 0.6" in sampled_part
    assert "| maj@3_strict | 0.0% |" in sampled_part and "| pass@3_strict | 50.0% |" in sampled_part
    results_card.check_card(TINY)


@pytest.mark.parametrize("damage, complaint", [
    (lambda card: card.unlink(), "No results card"),
    (lambda card: card.with_name("results.png").write_bytes(b"not a png"), "not a drawn PNG"),
    (lambda card: card.write_text(card.read_text().replace("| 6 | 1 | 0.125 |", "| 6 | 1 | 0.01 |")), "does not match"),
    (lambda card: card.write_text(card.read_text().replace("## Pi prompts", "## Pi")), "no section"),
    (lambda card: card.write_text(card.read_text().replace("| GRPO steps | 10 of 10 |", "| GRPO steps | 9 of 10 |")),
     "'## Run' does not match"),
])
def test_check_card_refuses_a_missing_or_edited_card(saved_run, damage, complaint):
    damage(results_card.write_card(TINY))
    with pytest.raises(results_card.CardError, match=complaint):
        results_card.check_card(TINY)


def test_check_card_refuses_a_card_older_than_the_results(saved_run, monkeypatch):
    results_card.write_card(TINY)
    newer = _compare(monkeypatch, set(range(8)), set(range(8)))
    evaluation.save_results(newer, evaluation.results_path(TINY))
    with pytest.raises(results_card.CardError, match="GSM8K before and after"):
        results_card.check_card(TINY)


def test_missing_inputs_name_the_notebook_and_command_to_run(artifacts):
    with pytest.raises(results_card.CardError, match=r"run notebook 04 \(or `python -m grpo_helpers train`\) first"):
        results_card.write_card(TINY)


def test_the_card_of_another_adapter_uses_its_own_run(saved_run, tmp_path):
    """evaluate --adapter-dir X: the run table comes from X's adapter_info.json and X's run's metrics.csv."""
    import shutil

    other = tmp_path / "elsewhere" / "lora_adapter"
    shutil.copytree(paths.adapter_dir(TINY.name), other)
    info = json.loads((other / modeling.ADAPTER_INFO_FILE).read_text())
    (other / modeling.ADAPTER_INFO_FILE).write_text(json.dumps({**info, "global_step": 7}))
    with pytest.raises(results_card.CardError, match="elsewhere/metrics.csv"):
        results_card.write_card(TINY, adapter_dir=other)
    callbacks.append_metric_rows(other.parent / callbacks.METRICS_FILE, 7, 1.0, {"reward": 0.5, "train_runtime": 9.0})
    text = results_card.write_card(TINY, adapter_dir=other).read_text()
    assert "| GRPO steps | 7 of 10 |" in text and "9 s (the Trainer's train_runtime, 1 session(s))" in text
    results_card.check_card(TINY, other)
    with pytest.raises(results_card.CardError, match="'## Run' does not match"):
        results_card.check_card(TINY)  # the profile's own adapter is another run
