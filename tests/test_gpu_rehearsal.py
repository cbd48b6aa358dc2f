"""scripts/gpu_rehearsal.py: its CPU dry run end to end, the no-GPU exit, the table/JSON, and the 8B-shaped builder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo_helpers import runtime, sizes, tiny
from grpo_helpers.profiles import T4, TINY

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_rehearsal.py"
SMALL_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2}


def _import_script():
    spec = importlib.util.spec_from_file_location("gpu_rehearsal", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rehearsal = _import_script()


# --- command line, profile, exit without a GPU -----------------------------------------------------

def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    if runtime.cuda_available():
        pytest.skip("this machine has a GPU")
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "smollm2", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert (run.stdout + run.stderr).strip().splitlines() == [rehearsal.NO_GPU_MESSAGE]
    assert not (tmp_path / "out").exists()  # nothing written


def test_arguments_and_the_stop_step():
    assert rehearsal.parse_args([]).model == "smollm2"
    assert rehearsal.parse_args(["--cpu-dry-run"]).model == "tiny"
    assert [rehearsal.stop_step(n) for n in (2, 3, 4, 9)] == [1, 1, 2, 4]
    with pytest.raises(SystemExit):
        rehearsal.parse_args(["--steps", "1"])  # nothing left to resume


def test_the_profile_keeps_the_t4_settings_and_swaps_model_steps_and_questions(tmp_path):
    profile = rehearsal.rehearsal_profile(str(tmp_path), steps=6, questions=3, cpu_dry_run=False)
    assert profile.name == rehearsal.PROFILE_NAME != T4.name  # its own artifacts folder
    assert (profile.model_name, profile.max_steps, profile.save_steps, profile.test_limit) == (str(tmp_path), 6, 3, 3)
    for knob in ("load_in_4bit", "fast_inference", "dtype", "vllm_standby", "gpu_memory_utilization", "num_generations",
                 "max_completion_length", "optim", "lora_rank", "use_gradient_checkpointing", "learning_rate"):
        assert getattr(profile, knob) == getattr(T4, knob), knob
    dry = rehearsal.rehearsal_profile(str(tmp_path), steps=2, questions=2, cpu_dry_run=True)
    assert (dry.dtype, dry.fast_inference, dry.num_generations) == (TINY.dtype, False, TINY.num_generations)


def test_models_by_folder_or_hub_id(tmp_path):
    assert rehearsal.resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert rehearsal.resolve_model("someone/some-model") == "someone/some-model"


# --- stages, dependencies, the report --------------------------------------------------------------

def _blank_report(path, cuda=False):
    report = {"mode": "gpu" if cuda else "cpu-dry-run", "model": "m", "model_path": "/m", "steps": 4, "stop_step": 2,
              "questions": 2, "device": {"cuda": cuda, "name": "NVIDIA T4" if cuda else "CPU", "total_gb": 14.7},
              "stages": []}
    rehearsal.save_report(report, path)
    return report


def test_a_failing_stage_skips_only_what_needs_it(tmp_path):
    path = tmp_path / "r.json"
    report = _blank_report(path)
    called = []
    assert rehearsal.run_stage(report, path, "prepare_model", lambda: rehearsal.Outcome("ok", {"x": 1}))

    def broken():
        raise RuntimeError("CUDA out of memory")

    assert not rehearsal.run_stage(report, path, "load", broken)
    assert not rehearsal.run_stage(report, path, "first_answers", lambda: called.append(1) or rehearsal.Outcome(""))
    assert called == []  # a stage whose needs failed never runs
    saved = rehearsal.load_report(path)  # written after every stage: a crash keeps what was done
    assert [(s["name"], s["status"]) for s in saved["stages"]] == [
        ("prepare_model", "pass"), ("load", "fail"), ("first_answers", "skip")]
    assert saved["stages"][1]["detail"] == "RuntimeError: CUDA out of memory"
    assert saved["stages"][2]["detail"] == "needs load"
    assert saved["stages"][0]["metrics"] == {"x": 1} and saved["stages"][0]["in_use_of"] == "rss"
    assert saved["stages"][0]["in_use_peak_gb"] > 0


def test_every_stage_has_a_body_and_needs_only_earlier_stages():
    names = [name for name, _, _ in rehearsal.STAGES]
    assert set(rehearsal.STAGE_BODIES) == set(names) - {"prepare_model"}
    for i, (name, phase, needs) in enumerate(rehearsal.STAGES):
        assert phase in ("main", *rehearsal.PHASES) and all(n in names[:i] for n in needs), name


def _full_report(path):
    report = _blank_report(path, cuda=True)
    metrics = {"train_to_stop": {"step_seconds": [30.0, 10.0]}, "resume_to_end": {"step_seconds": [20.0, 12.0]},
               "first_answers": {"tokens_per_s": 800.0},
               "before_after": {"tokens_per_s": {"base": 900.0, "trained": 850.0}}}
    for i, (name, _, _) in enumerate(rehearsal.STAGES):
        status = "fail" if name == "export_merged" else "pass"
        rehearsal.record(report, path, name, status, 1.5 * i, f"note {i}", metrics.get(name))
        stage = report["stages"][-1]
        stage["torch_peak_gb"], stage["in_use_peak_gb"] = (None, 3.5) if name == "prepare_model" else (6.0 + i, 13.0)
        stage["in_use_of"] = "rss" if name == "prepare_model" else "gpu"
    report["summary"] = rehearsal.summarize(report)
    return report


def test_summary_and_table(tmp_path):
    report = _full_report(tmp_path / "r.json")
    summary = report["summary"]
    assert summary["seconds_per_step"] == 11.0 and summary["steps_timed"] == 2  # first steps (warm-up) left out
    assert summary["first_step_seconds"] == [30.0, 20.0] and not summary["first_steps_only"]
    assert summary["generation_tokens_per_s"] == {"first_answers": 800.0, "before_after base": 900.0,
                                                  "before_after trained": 850.0}
    assert summary["torch_peak_gb"] == 6.0 + len(rehearsal.STAGES) - 1
    assert summary["in_use_peak_gb"] == 13.0  # the GPU stages only; prepare_model's RSS is another quantity
    counts = (summary["pass"], summary["fail"], summary["skip"], summary["ok"])
    assert counts == (len(rehearsal.STAGES) - 1, 1, 0, False)
    json.loads(json.dumps(report))  # the JSON written to --out is the same dict

    table = rehearsal.format_table(report).splitlines()
    assert "NVIDIA T4" in table[0] and "4 GRPO steps, stopped and resumed at 2" in table[0]
    header = table[1].split("  ")
    assert header[0] == "stage" and "in use peak GB (whole GPU, mem_get_info)" in table[1]
    rows = {line.split()[0]: line for line in table[3:3 + len(rehearsal.STAGES)]}
    assert list(rows) == [name for name, _, _ in rehearsal.STAGES]
    assert rows["export_merged"].split()[1] == "FAIL" and rows["load"].split()[1] == "PASS"
    assert "3.50 (RSS)" in rows["prepare_model"] and rows["load"].split()[3:5] == ["7.00", "13.00"]
    assert len({line.index("PASS") if "PASS" in line else line.index("FAIL") for line in rows.values()}) == 1
    footer = "\n".join(table[3 + len(rehearsal.STAGES):])
    assert "time per training step: 11.00 s, mean of 2 steps after the first of each process" in footer
    assert "first_answers 800.0, before_after base 900.0" in footer
    assert f"result: {len(rehearsal.STAGES) - 1} of {len(rehearsal.STAGES)} stages passed, 1 failed" in footer


# --- the 8B-shaped model (never built full size here: 16 GB) ---------------------------------------

def test_the_default_shape_is_llama_31_8b_without_writing_its_weights(tmp_path, monkeypatch):
    import safetensors.torch
    import torch
    import transformers.modeling_utils  # noqa: F401  (imported now, it binds the real save_file, not the stand-in)

    written: dict[str, dict[str, tuple[int, ...]]] = {}  # file -> tensor -> shape
    monkeypatch.setattr(torch, "randn", lambda size, generator=None: torch.empty(size, device="meta"))
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, path, metadata=None: written.update(
        {Path(path).name: {k: tuple(v.shape) for k, v in tensors.items()}}))
    folder = tiny.ensure_llama8b_shaped(tmp_path / "l8")
    shapes = {name: shape for shard in written.values() for name, shape in shard.items()}
    marker = json.loads((folder / tiny.BUILD_MARKER).read_text())
    assert marker["parameters"] == sizes.LLAMA3_8B_PARAMETERS == sum(torch.Size(s).numel() for s in shapes.values())
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == (128256, 4096)  # not tied
    assert shapes["model.layers.31.mlp.gate_proj.weight"] == (14336, 4096)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)  # 8 KV heads x 128
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {name: file for file, shard in written.items() for name in shard}
    assert index["metadata"]["total_size"] == 2 * sizes.LLAMA3_8B_PARAMETERS  # fp16
    assert len(written) > 1 and all(sum(2 * torch.Size(s).numel() for s in shard.values()) <= 4e9
                                    for shard in written.values())  # one 4 GB shard in memory at a time


def test_the_scaled_down_build_loads_chats_and_is_cached(tmp_path, capsys):
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from grpo_helpers import data

    folder = tiny.ensure_llama8b_shaped(tmp_path / "l8", config_overrides=SMALL_SHAPE, max_shard_gb=0.01)
    config = AutoConfig.from_pretrained(folder)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, 128256)
    assert config.rope_scaling["rope_type"] == "llama3" and config.rope_theta == 500000.0
    assert config.architectures == ["LlamaForCausalLM"] and not config.tie_word_embeddings
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    for shard in shards:
        with safe_open(str(shard), "pt") as handle:
            assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == tiny.TinySpec().vocab_size < config.vocab_size  # its ids are a subset of the rows
    assert tokenizer.eos_token == tiny.EOT and tokenizer.pad_token == tiny.PAD
    assert config.eos_token_id == tokenizer.eos_token_id and config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.eos_token_id in GenerationConfig.from_pretrained(folder).eos_token_id
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = tokenizer.apply_chat_template(data.format_prompt("What is 2+2?"), add_generation_prompt=True,
                                        return_tensors="pt")
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    assert isinstance(tokenizer.decode(out[0, ids.shape[1]:]), str)  # ids past the tokenizer decode to nothing
    capsys.readouterr()

    before = shards[0].stat().st_mtime_ns
    assert tiny.ensure_llama8b_shaped(tmp_path / "l8", config_overrides=SMALL_SHAPE, max_shard_gb=0.01) == folder
    assert shards[0].stat().st_mtime_ns == before and "Built" not in capsys.readouterr().out
    tiny.ensure_llama8b_shaped(tmp_path / "l8", config_overrides={**SMALL_SHAPE, "num_hidden_layers": 1})
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 1  # another shape: rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l8"]  # no staging folder left


# --- the dry run, end to end -----------------------------------------------------------------------

@pytest.mark.slow
def test_cpu_dry_run_passes_every_stage(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    # One OpenMP thread: on a busy 2-core runner two threads stall at every barrier while the other core is
    # taken (the same matmul loop measured 0.35 s idle, up to 32 s busy; one thread: 0.66 s either way).
    env = {**os.environ, "GRPO_ARTIFACTS": str(tmp_path / "artifacts"), "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    run = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--model", str(tiny_model_dir),
                          "--steps", "2", "--questions", "2", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    seconds = time.monotonic() - start
    print(f"CPU dry run: {seconds:.1f} s")
    report = json.loads((out / rehearsal.REPORT_FILE).read_text())
    failed = {s["name"]: s["detail"] for s in report["stages"] if s["status"] != "pass"}
    assert run.returncode == 0 and not failed, (failed, run.stdout[-3000:], run.stderr[-3000:])
    assert [s["name"] for s in report["stages"]] == [name for name, _, _ in rehearsal.STAGES]
    stages = {s["name"]: s for s in report["stages"]}
    assert len(stages["train_to_stop"]["metrics"]["step_seconds"]) == 1
    assert len(stages["resume_to_end"]["metrics"]["step_seconds"]) == 1
    assert stages["resume_to_end"]["metrics"]["resumed_from"].endswith("checkpoint-1")
    assert stages["resume_to_end"]["metrics"]["weights_compared"] > 0  # LoRA weights at resume = the checkpoint's
    assert stages["pi_sandbox"]["metrics"]["reference_digits"]["BBP series (correct)"] >= 15
    summary = report["summary"]
    assert summary["ok"] and summary["seconds_per_step"] > 0 and summary["generation_tokens_per_s"]["first_answers"] > 0
    assert report["device"]["cuda"] is False and report["profile"]["name"] == rehearsal.PROFILE_NAME
    assert (out / "export" / "lora" / "adapter_config.json").is_file()
    assert (out / "export" / "merged_16bit" / "config.json").is_file()
    assert (out / "artifacts" / rehearsal.PROFILE_NAME / "lora_adapter" / "adapter_model.safetensors").is_file()
    assert f"result: {len(rehearsal.STAGES)} of {len(rehearsal.STAGES)} stages passed" in run.stdout
    assert rehearsal.format_table(report) in run.stdout
