"""Measuring before/after on GSM8K: scoring, summaries, flips, results JSON; the adapter; exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_helpers import data, evaluation, export, modeling, runtime
from fakes import FakeGenerator
from grpo_helpers.generation import SamplingSettings
from grpo_helpers.profiles import PROFILES

PERFECT = data.format_completion("2 + 2 = 4", "4")


# --- GSM8K scoring ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, gold, strict, lenient, answer, format_ok", [
    (PERFECT, "4", True, True, True, True),
    (data.format_completion("Costs add up.", "$1,234"), "1234", True, True, True, True),
    ("The answer is 4.", "4", False, True, False, False),  # right number, no tags
    ("<reasoning>2 + 2</reasoning> <answer>4</answer>", "4", False, True, True, False),  # one-line tags
    (data.format_completion("2 + 3 = 5", "5"), "4", False, False, False, True),  # strict layout, wrong number
    (PERFECT + "\nI am 99% sure.", "4", False, False, True, False),  # text after </answer> ends in 99
    (PERFECT[:PERFECT.rindex("</answer>")], "4", False, True, False, False),  # cut off inside <answer>
    ("", "4", False, False, False, False),
    ("<answer>\n4\n</answer>", "4", False, True, True, False),  # no reasoning
])
def test_strict_and_lenient_scoring(reply, gold, strict, lenient, answer, format_ok):
    scores = evaluation.score_reply(reply, gold)
    assert scores == {"strict_correct": strict, "lenient_correct": lenient, "answer_correct": answer,
                      "format_ok": format_ok}
    assert not scores["strict_correct"] or (scores["lenient_correct"] and scores["format_ok"])


def _row(index, sample, strict, lenient=None, length=10, question="q", reply="r"):
    lenient = strict if lenient is None else lenient
    return {"index": index, "sample": sample, "question": f"{question}{index}", "gold": "4", "reply": f"{reply}{index}",
            "length_tokens": length, "truncated": length >= 48, "strict_correct": strict, "lenient_correct": lenient,
            "answer_correct": strict, "format_ok": strict}


def test_summarize_one_sample_each():
    rows = [_row(0, 0, True, length=10), _row(1, 0, False, True, length=20), _row(2, 0, False, length=48),
            _row(3, 0, False, length=30)]
    summary = evaluation.summarize(rows)
    assert summary["n_questions"] == 4 and summary["n_samples"] == 4
    assert summary["strict_accuracy"] == 0.25 and summary["lenient_accuracy"] == 0.5
    assert summary["format_rate"] == 0.25 and summary["mean_length_tokens"] == 27.0
    assert summary["truncated_rate"] == 0.25
    assert not any(k.startswith("pass@") for k in summary)
    assert evaluation.summarize([]) == {"n_questions": 0, "n_samples": 0}


def test_summarize_reports_pass_at_k_with_several_samples():
    rows = [_row(0, 0, True), _row(0, 1, False), _row(1, 0, False), _row(1, 1, False)]
    summary = evaluation.summarize(rows)
    assert summary["strict_accuracy"] == 0.25  # the pass@1 estimate
    assert summary["pass@2_strict"] == 0.5  # question 0 solved by one of its two samples


@pytest.mark.parametrize("n, c, k, expected", [
    (2, 1, 1, 0.5), (5, 0, 3, 0.0), (5, 5, 1, 1.0), (10, 3, 5, 1 - 21 / 252), (4, 2, 4, 1.0)])
def test_pass_at_k(n, c, k, expected):
    assert evaluation.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError):
        evaluation.pass_at_k(2, 1, 3)


# --- uncertainty and significance ------------------------------------------------------------------

@pytest.mark.parametrize("successes, n, expected", [
    (8, 10, (0.4902, 0.9433)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0))])
def test_wilson_interval_known_values(successes, n, expected):
    assert evaluation.wilson_interval(successes, n) == pytest.approx(expected, abs=5e-5)


def test_wilson_interval_edges_and_bad_input():
    assert evaluation.wilson_interval(0, 0) == (0.0, 1.0)
    low99, high99 = evaluation.wilson_interval(8, 10, confidence=0.99)
    assert low99 < 0.4902 and high99 > 0.9433  # more confidence, a wider interval
    for bad in ((11, 10), (-1, 10), (1, -1)):
        with pytest.raises(ValueError):
            evaluation.wilson_interval(*bad)


@pytest.mark.parametrize("fixed, broken, expected", [
    (9, 1, 22 / 1024),  # 2 * P(X <= 1), X ~ B(10, 1/2) = 0.021484375
    (1, 9, 22 / 1024), (6, 0, 2 / 64), (3, 0, 0.25), (5, 5, 1.0), (0, 0, 1.0), (0, 1, 1.0),
    (60, 40, 0.056887), (40, 60, 0.056887)])  # binomial test of 40 in 100, two-sided
def test_mcnemar_exact_two_sided_known_values(fixed, broken, expected):
    assert evaluation.mcnemar_p_value(fixed, broken) == pytest.approx(expected, abs=1e-6)


def test_mcnemar_handles_the_full_test_set_and_refuses_negative_counts():
    assert 0 < evaluation.mcnemar_p_value(700, 619) < 0.05  # 1,319 flips: exact integers, no overflow
    with pytest.raises(ValueError):
        evaluation.mcnemar_p_value(-1, 3)


# Cavo et al. (2012) in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017),
# chapter 8, as the R package contingencytables tests it: estimate -0.0621, 95% CI -0.1186 to -0.0046.
@pytest.mark.parametrize("counts, expected", [
    ((59, 6, 16, 80), (-0.1186, -0.0046)),
    ((59, 16, 6, 80), (0.0046, 0.1186)),  # the same flips the other way round
])
def test_paired_difference_interval_known_values(counts, expected):
    assert evaluation.paired_difference_interval(*counts) == pytest.approx(expected, abs=5e-5)


def _scored(index, sample, reply, gold="4"):
    return {"index": index, "sample": sample, "question": f"q{index}", "gold": gold, "reply": reply,
            "length_tokens": 5, "truncated": False, **evaluation.score_reply(reply, gold)}


def test_majority_vote_strict_and_lenient():
    right, wrong = data.format_completion("x", "4"), data.format_completion("x", "5")
    assert evaluation.majority_correct([_scored(0, i, r) for i, r in enumerate([right, right, wrong])])
    assert not evaluation.majority_correct([_scored(0, i, r) for i, r in enumerate([wrong, wrong, right])])
    loose = [_scored(0, i, r) for i, r in enumerate(["so 4", "it is 4", right])]  # right numbers, mostly no format
    assert not evaluation.majority_correct(loose, strict=True)  # two votes for "no answer in the format"
    assert evaluation.majority_correct(loose, strict=False)
    tie = [_scored(0, i, r) for i, r in enumerate([wrong, right])]
    assert not evaluation.majority_correct(tie) and evaluation.majority_correct(tie[::-1])  # ties: first seen


def test_question_outcomes_greedy_and_sampled():
    right, wrong = data.format_completion("x", "4"), data.format_completion("x", "5")
    greedy = [_scored(0, 0, right), _scored(1, 0, "4"), _scored(2, 0, wrong)]
    assert evaluation.question_outcomes(greedy, "strict_accuracy") == {0: True, 1: False, 2: False}
    assert evaluation.question_outcomes(greedy, "lenient_accuracy") == {0: True, 1: True, 2: False}
    sampled = [_scored(0, 0, wrong), _scored(0, 1, right), _scored(0, 2, wrong), _scored(1, 0, right),
               _scored(1, 1, right), _scored(1, 2, wrong)]
    assert evaluation.question_outcomes(sampled, "pass@3_strict") == {0: True, 1: True}
    assert evaluation.question_outcomes(sampled, "maj@3_strict") == {0: False, 1: True}
    with pytest.raises(ValueError, match="pass@k"):
        evaluation.question_outcomes(sampled, "strict_accuracy")  # one sample of several is not the rate
    with pytest.raises(ValueError):
        evaluation.question_outcomes(sampled, "pass@4_strict")
    summary = evaluation.summarize(sampled)
    assert summary["maj@3_strict"] == 0.5 and summary["pass@3_strict"] == 1.0


def _paired(base_right, trained_right, n):
    right, wrong = data.format_completion("x", "4"), data.format_completion("x", "5")
    return {"settings": {"num_samples": 1}, "n_questions": n,
            "rows": {"base": [_scored(i, 0, right if i in base_right else wrong) for i in range(n)],
                     "trained": [_scored(i, 0, right if i in trained_right else wrong) for i in range(n)]}}


def test_significance_table_and_the_verdict_sentence():
    result = _paired(set(range(8)), set(range(7)) | set(range(8, 14)), 20)  # 8/20 -> 13/20: 6 fixed, 1 broken
    table = evaluation.significance_table(result)
    row = table.loc["strict_accuracy"]
    assert (row["base"], row["trained"], row["change"]) == (0.4, 0.65, pytest.approx(0.25))
    assert (row["fixed"], row["broken"], row["n"]) == (6, 1, 20)
    assert row["p_value"] == pytest.approx(16 / 128)
    assert (row["base_low"], row["base_high"]) == pytest.approx(evaluation.wilson_interval(8, 20))
    assert row["change_low"] < 0.25 < row["change_high"]
    assert list(table.index) == list(evaluation.RATE_METRICS)
    sentence = evaluation.verdict(result)
    assert sentence.startswith("Strict accuracy went from 40.0% (95% CI 21.9%-61.3%) to 65.0%")
    assert "+25.0 points" in sentence and "6 questions fixed and 1 broken" in sentence
    assert "p = 0.125" in sentence and "not distinguishable from noise" in sentence
    strong = evaluation.verdict(_paired(set(), set(range(12)), 40))
    assert "p = 0.000488" in strong and "is distinguishable from noise" in strong
    assert "No question changed outcome" in evaluation.verdict(_paired({1}, {1}, 5))


def test_the_time_estimate_times_one_batch_of_the_trained_model(monkeypatch):
    fake = FakeGenerator(lambda side, q, i: "4")
    monkeypatch.setattr(evaluation, "generate_completions", fake)
    dataset = [{"prompt": data.format_prompt(f"q{i}"), "question": f"q{i}", "answer": "4"} for i in range(30)]
    estimate = evaluation.estimate_eval_seconds("model", "tok", dataset, SamplingSettings(max_new_tokens=8), 30,
                                                batch_size=4, lora_request="LORA")
    assert len(fake.calls) == 1 and len(fake.calls[0]["prompts"]) == 4 and fake.calls[0]["use_adapter"]
    assert (estimate.questions, estimate.warmup_questions) == (30, 4)
    assert estimate.seconds == pytest.approx(estimate.warmup_seconds / 4 * 30 * 2, abs=0.1)
    assert "30 questions x 2 models" in estimate.message()
    with pytest.raises(ValueError):
        evaluation.estimate_eval_seconds("model", "tok", dataset, SamplingSettings(max_new_tokens=8), 0)


def test_flipped_questions_both_ways_first_sample_only():
    before = [_row(0, 0, False), _row(1, 0, True), _row(2, 0, True), _row(3, 0, False), _row(3, 1, False)]
    after = [_row(0, 0, True, reply="new"), _row(1, 0, False), _row(2, 0, True), _row(3, 0, False), _row(3, 1, True)]
    flips = evaluation.flipped_questions(before, after)
    assert [(f["index"], f["change"]) for f in flips] == [(0, "fixed"), (1, "broken")]
    assert flips[0]["before_reply"] == "r0" and flips[0]["after_reply"] == "new0" and flips[0]["question"] == "q0"
    table = evaluation.flips_table(flips)
    assert list(table["change"]) == ["fixed", "broken"]
    lenient_flips = evaluation.flipped_questions(before, after, key="lenient_correct")
    assert [f["index"] for f in lenient_flips] == [0, 1]


def test_results_json_round_trip(artifacts):
    results = {"settings": {"max_new_tokens": 8}, "summary": {"base": {"strict_accuracy": 0.25}},
               "rows": {"base": [_row(0, 0, True)]}, "path": Path("/x")}
    path = evaluation.save_results(results, evaluation.results_path(PROFILES["tiny"]))
    assert path == artifacts / "tiny" / evaluation.GSM8K_RESULTS_FILE
    loaded = evaluation.load_results(path)
    assert loaded["summary"] == results["summary"] and loaded["rows"] == results["rows"]
    assert loaded["path"] == "/x" and "saved_at" in loaded
    json.loads(path.read_text())  # plain JSON


def test_compare_before_after_uses_identical_questions_and_settings(monkeypatch):
    rows = data.synthetic_gsm8k(6, seed=1)
    dataset = [{"prompt": data.format_prompt(r["question"]), "question": r["question"],
                "answer": data.extract_hash_answer(r["answer"])} for r in rows]
    gold = {r["question"]: r["answer"] for r in dataset}
    fake = FakeGenerator(lambda side, q, i: data.format_completion("x", gold[q] if side == "trained" else "0"))
    monkeypatch.setattr(evaluation, "generate_completions", fake)
    settings = SamplingSettings(max_new_tokens=8, seed=7)
    result = evaluation.compare_before_after("model", "tok", dataset, settings, batch_size=3, lora_request="LORA", limit=4)
    base_call, trained_call = fake.calls
    assert base_call["use_adapter"] is False and trained_call["use_adapter"] is True
    for key in ("prompts", "settings", "batch_size", "lora_request"):
        assert base_call[key] == trained_call[key]
    assert len(base_call["prompts"]) == 4 and result["question_indices"] == [0, 1, 2, 3]
    assert result["system_prompt"] == data.SYSTEM_PROMPT and result["settings"]["seed"] == 7
    assert result["summary"]["base"]["strict_accuracy"] == 0.0 and result["summary"]["trained"]["strict_accuracy"] == 1.0
    assert [r["question"] for r in result["rows"]["base"]] == [r["question"] for r in result["rows"]["trained"]]
    assert len(evaluation.flipped_questions(result["rows"]["base"], result["rows"]["trained"])) == 4
    table = evaluation.summary_table(result)
    assert table.loc["strict_accuracy", "change"] == 1.0


def test_side_by_side_html_escapes_and_flip_browser_builds():
    from grpo_helpers import plotting

    html = plotting.side_by_side_html([("before", "<script>x</script>", {"digits": 3}), ("after", "", {})])
    assert "&lt;script&gt;" in html and "<script>" not in html and "(empty reply)" in html
    widget = plotting.flip_browser([{"index": 0, "change": "fixed", "question": "q", "gold": "4",
                                     "before_reply": "a", "after_reply": "b"}])
    assert "before (base model)" in widget.children[1].value
    assert "No question" in plotting.flip_browser([]).value


# --- the adapter from notebook 04 ------------------------------------------------------------------

def test_missing_adapter_names_the_folder_and_notebook_03(artifacts):
    with pytest.raises(modeling.AdapterNotFoundError) as error:
        modeling.find_adapter(PROFILES["tiny"])
    message = str(error.value)
    assert str(artifacts / "tiny" / "lora_adapter") in message
    assert "run notebooks/04_train_grpo.ipynb first (same profile, same artifacts folder / drive)" in message.lower()
    (artifacts / "tiny" / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    with pytest.raises(modeling.AdapterNotFoundError, match="resumes from the newest"):
        modeling.find_adapter(PROFILES["tiny"])


def test_an_adapter_of_another_shape_is_refused(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    get_peft_model(Net(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    same = get_peft_model(Net(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert modeling.load_adapter_weights(same, tmp_path) == 2
    other = get_peft_model(Net(), LoraConfig(r=2, target_modules=["k_proj"]))
    with pytest.raises(ValueError, match="does not fit"):
        modeling.load_adapter_weights(other, tmp_path)


def test_export_rejects_unknown_kind():
    with pytest.raises(ValueError, match="merged_16bit"):
        export.export_model(None, None, "onnx", "/tmp/x")
    with pytest.raises(ValueError, match="onnx"):
        export.export_flagged(None, None, {"onnx": True}, "/tmp/x")


def test_export_flagged_runs_only_what_is_switched_on(monkeypatch, tmp_path):
    calls = []

    def fake_export(model, tokenizer, kind, directory, gguf_method="q4_k_m", profile=None):
        calls.append((kind, directory))
        return export.ExportResult(kind, True, str(directory), 1.0, 0.1, f"Saved {kind}.")

    monkeypatch.setattr(export, "export_model", fake_export)
    lines = export.export_flagged("m", "t", {"lora": True, "merged_16bit": False, "gguf": True}, tmp_path)
    assert calls == [("lora", tmp_path / "lora_adapter"), ("gguf", tmp_path / "gguf")]
    assert lines == ["Saved lora.", "merged_16bit: off (EXPORT_MERGED_16BIT = False)", "Saved gguf."]


def test_exports_that_cannot_work_here_say_why_without_trying(monkeypatch, tmp_path):
    import torch

    class Linear4bit(torch.nn.Module):
        """Named like bitsandbytes' 4-bit layer."""

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    merged = export.export_model(torch.nn.Sequential(Linear4bit()), None, "merged_16bit", tmp_path / "m")
    assert not merged.ok and "4-bit" in merged.message and "load_in_4bit=False" in merged.message
    monkeypatch.setattr(runtime, "host_reachable", lambda *args, **kwargs: False)
    gguf = export.export_model(torch.nn.Linear(2, 2), None, "gguf", tmp_path / "g")
    assert not gguf.ok and "no network" in gguf.message and "llama.cpp" in gguf.message
    assert not (tmp_path / "m").exists() and not (tmp_path / "g").exists()


# --- end to end on the tiny model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """The tiny model with a LoRA whose B matrices are random (so it differs from base), saved and reloaded."""
    import torch

    artifacts = tmp_path_factory.mktemp("artifacts")
    profile = PROFILES["tiny"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRPO_ARTIFACTS", str(artifacts))
        patch.setattr(modeling, "model_path", lambda profile: str(tiny_model_dir))
        model, tokenizer = modeling.load_model(profile)
        torch.manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
        adapter = modeling.save_adapter(model, tokenizer, modeling.paths.adapter_dir(profile.name))
        loaded = modeling.load_trained_model(profile)
        yield {"profile": profile, "trained": loaded, "saved": model, "artifacts": artifacts, "adapter": adapter}


@pytest.mark.slow
def test_trained_model_loads_the_saved_weights_and_base_is_the_base(trained):
    import torch

    from grpo_helpers.generation import adapter_disabled

    loaded, saved = trained["trained"].model, trained["saved"]
    assert str(trained["trained"].adapter_dir) == trained["adapter"] and trained["trained"].lora_request is None
    saved_lora = {k: v for k, v in saved.state_dict().items() if "lora_" in k}
    loaded_state = loaded.state_dict()
    assert saved_lora and all(torch.equal(v, loaded_state[k]) for k, v in saved_lora.items())
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        with_adapter = loaded(input_ids=ids).logits
        with adapter_disabled(loaded):
            without = loaded(input_ids=ids).logits
        with saved.disable_adapter():
            reference_base = saved(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without)
    assert torch.allclose(without, reference_base, atol=1e-5)


@pytest.mark.slow
def test_before_after_end_to_end_writes_results(trained, monkeypatch):
    monkeypatch.setenv("GRPO_ARTIFACTS", str(trained["artifacts"]))
    model, tokenizer = trained["trained"].model, trained["trained"].tokenizer
    dataset = data.load_gsm8k("test", trained["profile"])
    settings = SamplingSettings(max_new_tokens=8, seed=11)
    result = evaluation.compare_before_after(model, tokenizer, dataset, settings, batch_size=4, limit=4)
    base, after = result["rows"]["base"], result["rows"]["trained"]
    assert [r["question"] for r in base] == [r["question"] for r in after] == dataset["question"][:4]
    assert all(0 < r["length_tokens"] <= 8 for r in base + after)
    assert [r["reply"] for r in base] != [r["reply"] for r in after]  # the random LoRA changes greedy replies
    path = evaluation.save_results({"profile": "tiny", **result}, evaluation.results_path(trained["profile"]))
    assert path.is_file() and evaluation.load_results(path)["summary"]["base"]["n_questions"] == 4


@pytest.mark.slow
def test_exports_adapter_and_merged_16bit(trained, tmp_path):
    model, tokenizer = trained["trained"].model, trained["trained"].tokenizer
    lora = export.export_model(model, tokenizer, "lora", tmp_path / "lora")
    assert lora.ok and (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    merged = export.export_model(model, tokenizer, "merged_16bit", tmp_path / "merged")
    assert merged.ok, merged.message
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) in ("bfloat16", "float16")
    assert not list((tmp_path / "merged").glob("adapter_*"))  # a standalone model, no adapter left
