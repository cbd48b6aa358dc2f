"""Two training processes on CPU under `accelerate launch`: both train, only the main one writes, and the
adapter it saves is what every process holds; then `evaluate` scores it as notebook 05 does.

The run is the command the README gives, `accelerate launch --multi_gpu --num_processes 2 -m grpo_helpers
train --profile tiny --max-steps 3` (on a machine without a GPU torchrun's processes talk over gloo): the
pre-flight trains 2 steps and checkpoints them, training resumes from that checkpoint for step 3, then the
adapter and card are saved. A sitecustomize.py on PYTHONPATH records, in each training process, every
file it opens for writing through Python and every move or delete under the artifacts folder (audit hooks).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_helpers import backends, tiny
from grpo_helpers.profiles import PROFILES

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TRAIN = ["-m", "grpo_helpers", "train", "--profile", "tiny", "--max-steps", "3"]
# Each launched process with a RANK records what it writes under $PROBE_ROOT, and at exit whether Unsloth
# was imported, into $PROBE_DIR/rank-<RANK>.json.
WRITE_PROBE = '''
import atexit, json, os, sys
if os.environ.get("RANK") is not None and os.environ.get("PROBE_DIR"):
    _root = os.path.realpath(os.environ["PROBE_ROOT"]) + os.sep
    _writes = set()
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _record(path):
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_root):
                _writes.add(path[len(_root):])

    def _hook(event, args):
        if event == "open":
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS):
                _record(args[0])
        elif event in ("os.rename", "os.replace"):
            _record(args[0]); _record(args[1])
        elif event in ("os.remove", "os.rmdir", "shutil.rmtree", "shutil.move"):
            _record(args[0])

    def _dump():
        with open(os.path.join(os.environ["PROBE_DIR"], "rank-%s.json" % os.environ["RANK"]), "w") as f:
            json.dump({"writes": sorted(_writes), "unsloth_imported": "unsloth" in sys.modules}, f)

    sys.addaudithook(_hook)
    atexit.register(_dump)
'''


@pytest.fixture(scope="module")
def shared_tiny_model() -> Path:
    """The tiny profile's warm-started model, in the session's artifacts folder (the notebooks reuse it)."""
    root = Path(os.environ.get("GRPO_ARTIFACTS") or REPO / "outputs")
    spec = tiny.TinySpec(warm_start_steps=PROFILES["tiny"].warm_start_steps)
    return tiny.ensure_tiny_model(root / "tiny-llama", spec=spec)


def _launch(arguments: list[str], artifacts: Path, probe: Path | None = None, timeout: int = 600):
    env = {**os.environ, "GRPO_ARTIFACTS": str(artifacts), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("GRPO_PROFILE", None)
    if probe is not None:
        env.update(PROBE_DIR=str(probe), PROBE_ROOT=str(artifacts),
                   PYTHONPATH=os.pathsep.join([str(probe), str(REPO), env.get("PYTHONPATH", "")]))
        (probe / "sitecustomize.py").write_text(WRITE_PROBE)
    return subprocess.run([ACCELERATE, "launch", *arguments], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_two_processes_train_one_writes_and_the_adapter_is_what_each_holds(tmp_path, shared_tiny_model):
    artifacts, probe = tmp_path / "artifacts", tmp_path / "probe"
    artifacts.mkdir()
    probe.mkdir()
    (artifacts / "tiny-llama").symlink_to(shared_tiny_model, target_is_directory=True)
    run = _launch(["--multi_gpu", "--num_processes", "2", *TRAIN], artifacts, probe)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Backend 'trl' in 2 processes" in run.stdout  # Unsloth's backend is the profile's; DDP needs TRL's

    # The adapter the main process saved is what each process holds after training.
    adapter = artifacts / "tiny" / "lora_adapter"
    held = dict(re.findall(r"Process (\d) of 2: LoRA weights sha256 ([0-9a-f]{64}) = the saved adapter's", run.stdout))
    assert sorted(held) == ["0", "1"], run.stdout[-2000:]
    assert held["0"] == held["1"] == backends.saved_adapter_digest(adapter)
    from safetensors.torch import load_file

    weights = load_file(str(adapter / backends.ADAPTER_WEIGHTS))
    assert any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)  # PEFT starts B at zero: trained

    # Both processes trained the same 3 steps (pre-flight 2, checkpoint, resume, 1 more) as one run of 2 processes.
    card = json.loads((adapter / "adapter_info.json").read_text())
    assert card["global_step"] == 3 and card["run"]["processes"] == 2
    assert card["grpo_config"]["per_device_train_batch_size"] == PROFILES["tiny"].per_device_train_batch_size
    assert "Resuming from" in run.stdout and run.stdout.count("Resuming from") == 1  # printed by the main process only

    # Only the main process writes. The probe sees writes made through Python (our metrics, run.json, card,
    # PEFT's and the tokenizer's JSON); torch.save, safetensors and tokenizers write from C++/Rust, unseen.
    reports = {rank: json.loads((probe / f"rank-{rank}.json").read_text()) for rank in (0, 1)}
    assert not reports[0]["unsloth_imported"] and not reports[1]["unsloth_imported"]
    main_writes, other_writes = set(reports[0]["writes"]), set(reports[1]["writes"])
    for expected in ("tiny/metrics.csv", "tiny/reward_curves.png", "tiny/checkpoints/checkpoint-2/run.json",
                     "tiny/checkpoints/checkpoint-3/run.json", "tiny/checkpoints/checkpoint-3/trainer_state.json",
                     "tiny/lora_adapter/adapter_config.json", "tiny/lora_adapter/adapter_info.json"):
        assert expected in main_writes, (expected, sorted(main_writes))
    assert other_writes == set(), sorted(other_writes)
    # each process saves its own RNG state into the main process's checkpoint (the Trainer's, to resume it)
    assert {p.name for p in (artifacts / "tiny/checkpoints/checkpoint-3").glob("rng_state_*")} == {
        "rng_state_0.pth", "rng_state_1.pth"}
    rows = [line.split(",")[:3] for line in (artifacts / "tiny" / "metrics.csv").read_text().splitlines()[1:]]
    assert [step for step, _epoch, name in rows if name == "loss"] == ["1", "2", "3"]  # one writer: each step once


    # notebook 05's evaluation of that adapter, in one process (Unsloth's backend: the tiny profile's own)
    evaluated = subprocess.run([sys.executable, "-m", "grpo_helpers", "evaluate", "--profile", "tiny", "--questions",
                                "8", "--pi-samples", "1", "--set", "eval_samples=1"], cwd=REPO, capture_output=True,
                               text=True, timeout=600, env={**os.environ, "GRPO_ARTIFACTS": str(artifacts),
                                                            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
    assert "Unsloth should be imported before" not in evaluated.stderr  # as the notebooks import it: first
    gsm8k = json.loads((artifacts / "tiny" / "gsm8k_before_after.json").read_text())
    assert gsm8k["n_questions"] == 8 and gsm8k["adapter_dir"] == str(adapter)
    for name in ("pi_comparison.json", "results.md", "results.png"):
        assert (artifacts / "tiny" / name).is_file(), name


@pytest.mark.slow
def test_the_trl_backend_trains_qlora_with_gradient_checkpointing(tmp_path, shared_tiny_model):
    """One process, backend "trl": bitsandbytes 4-bit weights, LoRA, HF's checkpointing (TRL turns it off for
    each generation and back on with transformers' default kind, which needs inputs that require grad)."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "tiny-llama").symlink_to(shared_tiny_model, target_is_directory=True)
    run = subprocess.run([sys.executable, *TRAIN[:-1], "2", "--no-preflight", "--set", "backend=trl",
                          "load_in_4bit=true", "use_gradient_checkpointing=true"], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "GRPO_ARTIFACTS": str(artifacts),
                                                      "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Backend 'trl' in 1 process" in run.stdout and "Unsloth" not in run.stdout + run.stderr
    adapter = artifacts / "tiny" / "lora_adapter"
    card = json.loads((adapter / "adapter_info.json").read_text())
    assert card["global_step"] == 2 and card["run"]["model"]["load_in_4bit"] is True
    from safetensors.torch import load_file

    weights = load_file(str(adapter / backends.ADAPTER_WEIGHTS))
    assert any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)  # the loss had gradients


def test_accelerate_cpu_flag_starting_one_process_is_refused(tmp_path):
    """accelerate 1.10.1's --cpu starts ONE process without MPI: the command says so instead of training alone."""
    run = _launch(["--cpu", "--num_processes", "2", *TRAIN], tmp_path / "artifacts", timeout=300)
    assert run.returncode != 0 and "returned non-zero exit status 2" in run.stderr  # the launcher reports 1
    error = [line for line in run.stderr.splitlines() if "grpo_helpers train: error:" in line]
    assert len(error) == 1 and "started ONE process" in error[0] and "--multi_gpu --num_processes N" in error[0]
    assert not (tmp_path / "artifacts").exists()  # nothing written
