"""Resume only ever continues the same run; a profile asking for vLLM stops without it (tiny model, few steps)."""

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from grpo_helpers import callbacks, checkpoints, data, grpo_config, modeling, paths, rewards, training
from grpo_helpers.profiles import PROFILES

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = PROFILES["tiny"]
# A few quick steps: one question (4 answers of 16 tokens) per step, a checkpoint every 2 steps.
FAST = TINY.replace(max_steps=4, save_steps=2, save_total_limit=3, train_limit=16, per_device_train_batch_size=4,
                    num_generations=4, max_completion_length=16)
QUIET = {"redraw_every_s": 1e9}


def fake_checkpoint(folder: Path, run_id: str | None = None) -> Path:
    """A complete-looking checkpoint (valid headers, whole files), of run `run_id` or of the old format."""
    import torch
    from safetensors.torch import save

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": checkpoints.checkpoint_step(folder)}))
    (folder / "adapter_model.safetensors").write_bytes(save({"lora_A": torch.zeros(4, 2)}))
    for name in checkpoints.REQUIRED_STATE_FILES:
        torch.save({"state": {}}, folder / name)
    if run_id:
        (folder / checkpoints.RUN_FILE).write_text(json.dumps({"run_id": run_id}))
    return folder


def moved_aside(profile_name: str) -> dict[str, Path]:
    """Everything under <checkpoints>-previous/, by name."""
    root = paths.checkpoints_dir(profile_name).parent / f"checkpoints{checkpoints.PREVIOUS_SUFFIX}"
    return {p.name: p for stamp in root.glob("*") for p in stamp.iterdir()} if root.is_dir() else {}


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    """One tiny model with LoRA for the whole module: every resume loads its checkpoint's weights anyway."""
    import torch

    with mock.patch.object(modeling, "model_path", lambda profile: str(tiny_model_dir)):
        model_and_tokenizer = modeling.load_model(FAST)
    # A model this small is as fast on one thread, and two OpenMP threads spin-waiting for each other on
    # a busy 2-core machine made the same steps 10-50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield model_and_tokenizer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train_set():
    return data.load_gsm8k("train", FAST)


def reward_steps(result: training.TrainingResult) -> list[int]:
    table = callbacks.read_metrics(result.metrics_csv).query("name != 'epoch'")  # the end-of-train log repeats it
    assert not table.duplicated(["step", "name"]).any(), "a step was logged twice"
    return sorted(table.query("name == 'reward'")["step"])


# --- the run identity and complete checkpoints (no training) -------------------------------------------

def test_the_run_is_its_optimisation_settings_not_its_bookkeeping():
    same = training.run_id(training.run_identity(FAST))
    assert training.run_id(training.run_identity(FAST.replace(max_steps=500, save_steps=7, logging_steps=5,
                                                              save_total_limit=9))) == same
    assert training.run_id(training.run_identity(FAST, output_dir="/elsewhere", report_to="tensorboard")) == same
    for change in ({"learning_rate": 1e-4}, {"num_generations": 2}, {"beta": 0.04}, {"seed": 1},
                   {"lora_rank": 8}, {"train_limit": 32}, {"model_name": "other"}):
        assert training.run_id(training.run_identity(FAST.replace(**change))) != same, change
    assert training.run_id(training.run_identity(FAST, top_p=0.9)) != same  # an override that shapes the run
    funcs = list(rewards.DEFAULT_REWARDS)
    assert training.run_id(training.run_identity(FAST, funcs, rewards.DEFAULT_REWARD_WEIGHTS)) == same
    assert training.run_id(training.run_identity(FAST, funcs, [1.0] * len(funcs))) != same
    assert training.run_id(training.run_identity(FAST, funcs[:2], rewards.DEFAULT_REWARD_WEIGHTS[:2])) != same
    identity = training.run_identity(FAST)
    assert "max_steps" not in identity["grpo_config"] and identity["grpo_config"]["learning_rate"] == FAST.learning_rate


def test_a_checkpoint_is_complete_only_with_whole_files(tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint-4")
    assert checkpoints.checkpoint_problem(folder) is None
    weights = folder / "adapter_model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-3])  # half uploaded: header intact, data short
    assert "bytes where its header says" in checkpoints.checkpoint_problem(folder)
    weights.write_bytes(whole[:5])
    assert "truncated" in checkpoints.checkpoint_problem(folder)
    weights.write_bytes(whole)
    optimizer = folder / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:40])  # a zip without its end record
    assert checkpoints.checkpoint_problem(folder) == "optimizer.pt is truncated"
    optimizer.write_bytes(b"")
    assert checkpoints.checkpoint_problem(folder) == "optimizer.pt is empty"
    optimizer.unlink()
    assert checkpoints.checkpoint_problem(folder) == "no optimizer.pt"
    (folder / "trainer_state.json").unlink()
    assert checkpoints.checkpoint_problem(folder) == "no trainer_state.json"


def test_a_deepspeed_checkpoint_has_its_optimizer_in_global_step_folder(tmp_path):
    """Under DeepSpeed the Trainer writes `latest` + global_stepN/ (the engine's save_checkpoint), no optimizer.pt."""
    import torch

    folder = fake_checkpoint(tmp_path / "checkpoint-4", "mine")
    (folder / "optimizer.pt").unlink()
    state = folder / "global_step4"
    state.mkdir()
    (folder / checkpoints.DEEPSPEED_LATEST_FILE).write_text("global_step4")
    torch.save({"optimizer_state_dict": {}}, state / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert checkpoints.checkpoint_problem(folder) is None
    assert checkpoints.latest_checkpoint(tmp_path, "mine") == str(folder)
    optim = state / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:40])  # cut off while saving
    assert checkpoints.checkpoint_problem(folder) == f"{optim.name} is truncated"
    optim.unlink()
    assert checkpoints.checkpoint_problem(folder) == "no DeepSpeed state files in global_step4"
    (folder / checkpoints.DEEPSPEED_LATEST_FILE).write_text("global_step9")  # names a folder that is not there
    assert checkpoints.checkpoint_problem(folder) == "no optimizer.pt"


def test_latest_checkpoint_keeps_to_its_run(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint-5", "mine")
    fake_checkpoint(tmp_path / "checkpoint-10", "mine")
    fake_checkpoint(tmp_path / "checkpoint-250", "another")  # higher step, newer mtime
    fake_checkpoint(tmp_path / "checkpoint-300")  # old format: no run.json
    assert checkpoints.latest_checkpoint(tmp_path, "mine") == str(tmp_path / "checkpoint-10")
    assert checkpoints.latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-300")  # the old signature: any run
    assert checkpoints.latest_checkpoint(tmp_path, "nobody") is None


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,epoch,name,value,wall_time\n"
                    "1,0.1,reward,0.5,1\n2,0.2,reward,0.6,2\n3,0.3,reward,0.7,3\n3,0.3,re")
    assert checkpoints.truncate_metrics(path, 2) == 2  # step 3 and the line torn by the disconnect
    assert list(callbacks.read_metrics(path)["step"]) == [1, 2]
    assert checkpoints.truncate_metrics(path, 2) == 0 and checkpoints.truncate_metrics(tmp_path / "none.csv", 2) == 0


# --- training: interrupted, resumed, continued -------------------------------------------------------

@pytest.mark.slow
def test_a_resume_after_an_interrupted_new_run_continues_the_new_run(artifacts, loaded, train_set, capsys):
    model, tokenizer = loaded
    checkpoint_dir = paths.checkpoints_dir(FAST.name)
    fake_checkpoint(checkpoint_dir / "checkpoint-250", run_id="an-earlier-run")
    fake_checkpoint(checkpoint_dir / "checkpoint-300")  # from before checkpoints named their run
    (paths.profile_dir(FAST.name) / callbacks.METRICS_FILE).write_text("step,epoch,name,value,wall_time\n")

    first = training.train_grpo(model, tokenizer, train_set, FAST, resume=False, stop_after=2, **QUIET)
    assert first.stopped_early and first.global_step == 2
    assert {"checkpoint-250", "checkpoint-300", callbacks.METRICS_FILE} <= set(moved_aside(FAST.name))
    assert checkpoints.checkpoint_folders(checkpoint_dir) == [checkpoint_dir / "checkpoint-2"]

    # The earlier run's checkpoint turns up again, with a higher step and a newer mtime.
    intruder = fake_checkpoint(checkpoint_dir / "checkpoint-500", run_id="an-earlier-run")
    later = time.time() + 3600
    os.utime(intruder, (later, later))
    capsys.readouterr()
    second = training.train_grpo(model, tokenizer, train_set, FAST, **QUIET)
    assert second.resumed_from == str(checkpoint_dir / "checkpoint-2") and second.global_step == FAST.max_steps
    assert second.run_id == first.run_id and not intruder.exists()
    assert "checkpoint-500 (another run's" in capsys.readouterr().out
    assert reward_steps(second) == list(range(1, FAST.max_steps + 1))
    assert checkpoints.checkpoint_run_id(second.checkpoint) == first.run_id
    card = json.loads((second.adapter_dir / training.ADAPTER_INFO_FILE).read_text())
    assert card["run_id"] == first.run_id and card["run"]["profile"] == FAST.name


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(artifacts, loaded, train_set, capsys):
    model, tokenizer = loaded
    profile = FAST.replace(save_steps=1)
    checkpoint_dir = paths.checkpoints_dir(profile.name)
    training.train_grpo(model, tokenizer, train_set, profile, resume=False, stop_after=3, **QUIET)
    weights = checkpoint_dir / "checkpoint-3" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # Drive got half of it
    (checkpoint_dir / "checkpoint-2" / "optimizer.pt").write_bytes(b"passes the cheap checks, fails to load")
    capsys.readouterr()

    # The notebook's way: TRL's config and trainer built in view, then trained; a failed load rebuilds the trainer
    # with the same config and callbacks.
    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            StepCounter.steps += 1

    config = grpo_config.build_grpo_config(profile, model=model)
    trainer = training.build_trainer(model, tokenizer, train_set, profile, callbacks=[StepCounter()], config=config,
                                     **QUIET)
    grpo_config.config_table(config, profile)  # a GRPOConfig made after the trainer resets accelerate's state under it
    result = training.train_grpo(model, tokenizer, train_set, profile, trainer=trainer)
    out = capsys.readouterr().out
    assert StepCounter.steps == profile.max_steps - 1  # carried to the rebuilt trainers, the last trained steps 2-4
    assert trainer.args is not config and config.output_dir == str(checkpoint_dir)  # each trainer has its own copy
    assert result.resumed_from == str(checkpoint_dir / "checkpoint-1") and result.global_step == profile.max_steps
    assert "checkpoint-3 (incomplete, adapter_model.safetensors is" in out
    assert "checkpoint-2 (failed to load" in out and f"Falling back to {checkpoint_dir / 'checkpoint-1'}" in out
    assert {"checkpoint-2", "checkpoint-3"} <= set(moved_aside(profile.name))
    assert reward_steps(result) == list(range(1, profile.max_steps + 1))


@pytest.mark.slow
def test_when_no_checkpoint_of_the_run_loads_it_says_to_restart(artifacts, loaded, train_set):
    model, tokenizer = loaded
    checkpoint_dir = paths.checkpoints_dir(FAST.name)
    training.train_grpo(model, tokenizer, train_set, FAST, resume=False, stop_after=2, **QUIET)
    (checkpoint_dir / "checkpoint-2" / "optimizer.pt").write_bytes(b"passes the cheap checks, fails to load")
    with pytest.raises(RuntimeError, match=r"Runtime > Restart session\) and run this notebook again"):
        training.train_grpo(model, tokenizer, train_set, FAST, **QUIET)
    assert "checkpoint-2" in moved_aside(FAST.name) and training.resume_step(FAST) == 0


@pytest.mark.slow
def test_after_a_kill_and_resume_every_step_is_in_metrics_once(artifacts, loaded, train_set, capsys):
    model, tokenizer = loaded
    checkpoint_dir = paths.checkpoints_dir(FAST.name)
    first = training.train_grpo(model, tokenizer, train_set, FAST, resume=False, stop_after=3, **QUIET)
    assert reward_steps(first) == [1, 2, 3]
    shutil.rmtree(checkpoint_dir / "checkpoint-3")  # killed after step 3 was logged, before it was saved
    with first.metrics_csv.open("a") as handle:
        handle.write("3,0.1,rewa")  # and mid-line
    capsys.readouterr()

    result = training.train_grpo(model, tokenizer, train_set, FAST, **QUIET)
    assert result.resumed_from == str(checkpoint_dir / "checkpoint-2")
    assert "metrics.csv rows after step 2, redone now" in capsys.readouterr().out
    assert reward_steps(result) == list(range(1, FAST.max_steps + 1))


@pytest.mark.slow
def test_stop_after_then_resume_reaches_max_steps_as_the_same_run(artifacts, loaded, train_set, capsys, monkeypatch):
    model, tokenizer = loaded
    monkeypatch.setattr(paths, "DRIVE_ROOT", artifacts.parent)  # as if the artifacts were on Google Drive
    checkpoint_dir = paths.checkpoints_dir(FAST.name)
    from transformers.utils.notebook import NotebookProgressCallback  # Colab's progress bar

    first = training.train_grpo(model, tokenizer, train_set, FAST, resume=False, stop_after=2,
                                callbacks=[NotebookProgressCallback()], **QUIET)
    assert first.stopped_early and first.adapter_dir is None and first.global_step == 2
    assert first.checkpoint == str(checkpoint_dir / "checkpoint-2") and first.metrics_csv.is_file()
    assert not any(paths.adapter_dir(FAST.name).glob("*"))  # no adapter, no card: the run is not finished
    assert capsys.readouterr().out.count("drive.google.com > Trash > Empty trash") == 1
    run_file = json.loads((checkpoint_dir / "checkpoint-2" / checkpoints.RUN_FILE).read_text())
    assert run_file["run_id"] == first.run_id and run_file["global_step"] == 2
    assert training.resume_step(FAST, model) == 2

    trainer = training.build_trainer(model, tokenizer, train_set, FAST, **QUIET)
    result = training.train_grpo(model, tokenizer, train_set, FAST, trainer=trainer)
    assert not result.stopped_early and result.global_step == FAST.max_steps and result.run_id == first.run_id
    assert result.resumed_from == first.checkpoint
    assert [checkpoints.checkpoint_run_id(f) for f in checkpoints.checkpoint_folders(checkpoint_dir)] == [first.run_id] * 2
    card = json.loads((result.adapter_dir / training.ADAPTER_INFO_FILE).read_text())
    assert card["global_step"] == FAST.max_steps and card["run_id"] == first.run_id
    with pytest.raises(ValueError, match="has trained already; build a new one"):
        training.train_grpo(model, tokenizer, train_set, FAST, trainer=trainer)


# --- vLLM or a clear stop --------------------------------------------------------------------------

T4_LIKE = TINY.replace(fast_inference=True)  # asks for vLLM; this machine has none


@pytest.mark.slow
def test_a_profile_asking_for_vllm_stops_before_training_without_an_engine(artifacts, loaded, train_set):
    model, tokenizer = loaded
    old = fake_checkpoint(paths.checkpoints_dir(T4_LIKE.name) / "checkpoint-7", run_id="an-earlier-run")
    with pytest.raises(modeling.VLLMUnavailableError) as stopped:
        training.train_grpo(model, tokenizer, train_set, T4_LIKE, resume=False, **QUIET)
    message = str(stopped.value)
    assert "ModuleNotFoundError: No module named 'vllm'" in message  # what vLLM itself says
    assert "Runtime > Restart session" in message and "fast_inference=False" in message
    assert not any(paths.adapter_dir(T4_LIKE.name).glob("*")) and old.is_dir()  # nothing written, nothing moved
    assert not (paths.profile_dir(T4_LIKE.name) / callbacks.METRICS_FILE).exists()
    with pytest.raises(modeling.VLLMUnavailableError):
        training.build_trainer(model, tokenizer, train_set, T4_LIKE)


def test_loading_for_vllm_without_it_stops_right_after_loading(tiny_model_dir):
    with mock.patch.object(modeling, "model_path", lambda profile: str(tiny_model_dir)):
        with pytest.raises(modeling.VLLMUnavailableError, match="No module named 'vllm'"):
            modeling.load_base_model(T4_LIKE)  # Unsloth's own ImportError, explained
        from unsloth import FastLanguageModel

        no_engine = (SimpleNamespace(vllm_engine=None), object())  # Unsloth fell back to HF generate
        with mock.patch.object(FastLanguageModel, "from_pretrained", return_value=no_engine):
            with pytest.raises(modeling.VLLMUnavailableError, match="Restart session"):
                modeling.load_model(T4_LIKE)


def test_use_vllm_follows_the_model(tmp_path, monkeypatch):
    with_engine, without = SimpleNamespace(vllm_engine=object()), SimpleNamespace()
    assert grpo_config.grpo_config_values(TINY, tmp_path, model=with_engine)["use_vllm"] is True
    assert grpo_config.grpo_config_values(T4_LIKE, tmp_path, model=without)["use_vllm"] is False
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    assert modeling.vllm_problem() == modeling.VLLM_IMPORTS_FINE
    assert "vLLM imported fine but Unsloth loaded the model without it" in str(modeling.vllm_unavailable(T4_LIKE))


def test_vllm_standby_is_set_before_unsloth_is_first_imported(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "unsloth.py").write_text(f"import os\nSEEN = os.environ.get({modeling.STANDBY_ENV!r})\n")
    code = ("from grpo_helpers import modeling, profiles\n"
            "print(modeling.import_unsloth(profiles.PROFILES['tiny'].replace(vllm_standby=True)).SEEN)")
    env = {k: v for k, v in os.environ.items() if k != modeling.STANDBY_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(fake), str(REPO_ROOT)])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_vllm_standby_after_unsloth_was_imported_warns_to_restart(monkeypatch):
    modeling.import_unsloth()
    monkeypatch.delenv(modeling.STANDBY_ENV, raising=False)
    with pytest.warns(UserWarning, match="only after a runtime restart"):
        modeling.import_unsloth(TINY.replace(vllm_standby=True))
    assert modeling.STANDBY_ENV not in os.environ  # Unsloth already read it: changing it now would split the setup
