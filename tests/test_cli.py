"""The command line (bad input: one line, status 2, nothing written), the engine profiles, the vLLM server
wiring without a GPU, and the accelerate/DeepSpeed configs shipped in configs/."""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from grpo_helpers import backends, cli, commands, grpo_config, modeling, profiles, runtime, training
from grpo_helpers.profiles import PROFILES, ProfileError

REPO = Path(__file__).resolve().parents[1]
KAGGLE, MULTI = PROFILES["kaggle_2xt4"], PROFILES["multi_gpu"]


@pytest.fixture()
def no_artifacts(tmp_path, monkeypatch):
    """$GRPO_ARTIFACTS pointing at a folder that does not exist yet, on a machine without a GPU."""
    folder = tmp_path / "artifacts"
    monkeypatch.setenv("GRPO_ARTIFACTS", str(folder))
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    for name in ("ACCELERATE_USE_CPU", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return folder


@pytest.mark.parametrize("argv, names", [
    (["train", "--profile", "nope"], ["invalid choice: 'nope'", "'tiny'", "'multi_gpu'"]),
    (["train", "--profile", "tiny", "--set", "lerning_rate=1e-5"], ["no field 'lerning_rate'", "learning_rate"]),
    (["train", "--profile", "tiny", "--set", "max_steps=ten"], ["max_steps takes a whole number"]),
    (["train", "--profile", "tiny", "--set", "fast_inference=maybe"], ["fast_inference takes true or false"]),
    (["train", "--profile", "tiny", "--set", "use_gradient_checkpointing=always"], ["true, false, unsloth"]),
    (["train", "--profile", "tiny", "--set", "backend=deepspeed"], ["Valid backends: 'unsloth'", "'trl'"]),
    (["train", "--profile", "tiny", "--set", "vllm_mode=remote"], ["Valid modes: 'colocate'", "'server'"]),
    (["train", "--profile", "tiny", "--set", "max_steps"], ["NAME=VALUE"]),
    (["train", "--profile", "tiny", "--max-steps", "0"], ["1 or more"]),
    (["train", "--profile", "t4"], ["needs a CUDA GPU", "on CPU: tiny"]),
    (["train", "--profile", "kaggle_2xt4"], ["needs a CUDA GPU", "on CPU: tiny"]),
    (["evaluate", "--profile", "tiny", "--questions", "0"], ["--questions takes 1 or more"]),
    (["vllm-serve", "--profile", "tiny"], ["vllm_mode='colocate'", "kaggle_2xt4"]),
    (["train", "--profile", "tiny", "--set", "backend=trl", "fast_inference=true", "load_in_4bit=true"],
     ["trl#4973", "load_in_4bit=False"]),
])
def test_bad_input_is_one_line_status_2_and_nothing_written(no_artifacts, capsys, argv, names):
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "error:" in err, err
    assert all(name in err for name in names), err
    assert not no_artifacts.exists()


def test_an_unknown_profile_from_the_environment_is_the_same_one_line_error(no_artifacts, capsys, monkeypatch):
    monkeypatch.setenv(profiles.PROFILE_ENV, "t5")
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Valid profiles: kaggle_2xt4, multi_gpu, t4, tiny" in err


def test_help_lists_every_profile_field_and_profile(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(profiles.Profile):
        assert f"  {field.name} (" in out, field.name
    assert all(f"  {name} " in out for name in PROFILES)
    docs = dict((name, text) for name, _, text in cli.profile_field_docs())
    assert "the ratio is exactly 1" in docs["num_iterations"]  # a comment's continuation line is kept


@pytest.mark.parametrize("item, expected", [
    ("max_steps=12", ("max_steps", 12)), ("learning_rate=1e-5", ("learning_rate", 1e-5)),
    ("fast_inference=False", ("fast_inference", False)), ("train_limit=none", ("train_limit", None)),
    ("train_limit=100", ("train_limit", 100)), ("use_gradient_checkpointing=unsloth", ("use_gradient_checkpointing", "unsloth")),
    ("use_gradient_checkpointing=true", ("use_gradient_checkpointing", True)),
    ("lora_target_modules=q_proj, v_proj", ("lora_target_modules", ("q_proj", "v_proj"))),
    ("vllm_server_host=10.0.0.2", ("vllm_server_host", "10.0.0.2")),
])
def test_settings_take_the_fields_types(item, expected):
    assert cli.parse_setting(item) == expected


def test_accelerate_cpu_launch_of_one_process_is_refused(no_artifacts, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what accelerate launch --cpu --num_processes 2 sets
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert cli.main(["train", "--profile", "tiny"]) == 2
    assert "accelerate launch --multi_gpu --num_processes N" in capsys.readouterr().err
    assert not no_artifacts.exists()


def test_evaluate_refuses_several_processes(no_artifacts, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["evaluate", "--profile", "tiny"]) == 2
    assert "runs in one process" in capsys.readouterr().err


# --- the engine profiles -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["KAGGLE_2XT4", "MULTI_GPU"])
def test_the_engine_profiles_restate_only_what_differs_from_t4(name):
    source = Path(profiles.__file__).read_text()
    block = source[source.index(f"{name} = T4.replace("):]
    block = block[:block.index("\n)\n")]
    restated = [line.split("=")[0].strip() for line in block.splitlines()[1:] if "=" in line.split("#")[0]]
    profile = getattr(profiles, name)
    assert not [f for f in restated if getattr(profile, f) == getattr(profiles.T4, f)]
    assert all("#" in line for line in block.splitlines()[3:]), "each difference says why"


def test_the_engine_profiles_fit_their_engines():
    for profile in (KAGGLE, MULTI):
        backends.check_engine(profile)
        assert profile.backend == "trl" and not profile.load_in_4bit and profile.fast_inference
        assert profile.max_prompt_length + profile.max_completion_length <= profile.max_seq_length
        assert profile.per_device_train_batch_size % profile.num_generations == 0
    assert KAGGLE.vllm_mode == "server" and KAGGLE.dtype == "float16"  # T4s have no bf16
    assert MULTI.vllm_mode == "colocate" and MULTI.dtype == "bfloat16"
    assert PROFILES["tiny"].backend == PROFILES["t4"].backend == "unsloth"  # the notebooks' path, also on CPU


def test_several_processes_always_train_with_trl(monkeypatch):
    assert backends.backend_for(PROFILES["tiny"]) == "unsloth"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert backends.backend_for(PROFILES["tiny"]) == "trl"
    with pytest.raises(ProfileError, match="trl#4973"):  # the t4 plan (4-bit + vLLM) cannot run there
        backends.check_engine(PROFILES["t4"])


def test_grpo_config_gets_the_server_host_port_and_timeout(tmp_path, monkeypatch):
    # this pytest process may have imported Unsloth already, which the "trl" backend refuses; the values are the point
    monkeypatch.setattr(grpo_config, "prepare_backend", lambda profile: None)  # build_grpo_config's
    profile = KAGGLE.replace(vllm_server_host="10.1.2.3", vllm_server_port=8123, vllm_server_timeout_s=90.0)
    config = grpo_config.build_grpo_config(profile, tmp_path)
    assert (config.use_vllm, config.vllm_mode) == (True, "server")
    assert (config.vllm_server_host, config.vllm_server_port, config.vllm_server_timeout) == ("10.1.2.3", 8123, 90.0)
    assert config.gradient_checkpointing is False  # set up on the model by add_trl_lora instead
    colocated = grpo_config.build_grpo_config(MULTI, tmp_path)
    assert colocated.vllm_mode == "colocate" and colocated.vllm_gpu_memory_utilization == MULTI.gpu_memory_utilization
    # where generation runs is not what the run is: a server elsewhere continues the same run
    assert training.run_id(training.run_identity(KAGGLE, config=grpo_config.build_grpo_config(KAGGLE, tmp_path))) == \
        training.run_id(training.run_identity(profile, config=config))


def test_the_server_command_is_what_trl_vllm_serve_parses():
    from trl.scripts.vllm_serve import make_parser

    command = backends.vllm_serve_command(KAGGLE, KAGGLE.model_name)
    assert command[:2] == ["trl", "vllm-serve"]
    (args,) = make_parser().parse_args_and_config(command[2:])
    assert (args.model, args.host, args.port) == (KAGGLE.model_name, KAGGLE.vllm_server_host, KAGGLE.vllm_server_port)
    assert (args.gpu_memory_utilization, args.dtype, args.max_model_len) == (
        KAGGLE.gpu_memory_utilization, KAGGLE.dtype, KAGGLE.max_seq_length)


def test_vllm_serve_dry_run_prints_the_command(capsys, no_artifacts):
    assert cli.main(["vllm-serve", "--profile", "kaggle_2xt4", "--dry-run", "--set", "vllm_server_port=8011"]) == 0
    out = capsys.readouterr().out
    assert "trl vllm-serve --model unsloth/Llama-3.2-3B-Instruct --host 127.0.0.1 --port 8011" in out
    assert "http://127.0.0.1:8011" in out


def test_our_health_check_asks_what_trl_asks():
    import inspect

    from trl.extras.vllm_client import VLLMClient

    assert f'"{backends.VLLM_HEALTH_PATH}"' in inspect.getsource(VLLMClient.check_server).replace("{self.base_url}", "")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_is_a_clear_error_after_the_timeout():
    port = _closed_port()
    profile = KAGGLE.replace(vllm_server_port=port, vllm_server_timeout_s=0.6)
    start = time.monotonic()
    with pytest.raises(backends.VLLMServerUnreachableError) as error:
        modeling.require_vllm(None, profile)
    waited = time.monotonic() - start
    message = str(error.value)
    assert 0.5 < waited < 5, waited
    assert f"127.0.0.1:{port}" in message and "after 0.6 s" in message
    assert "python -m grpo_helpers vllm-serve --profile kaggle_2xt4" in message and "CUDA_VISIBLE_DEVICES" in message
    assert "vllm_mode=colocate" in message and "vllm_server_timeout_s" in message


def test_a_server_that_answers_passes_and_then_vllm_itself_is_checked():
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == backends.VLLM_HEALTH_PATH else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        profile = KAGGLE.replace(vllm_server_port=server.server_address[1], vllm_server_timeout_s=5.0)
        backends.check_vllm_server(profile)  # answers at once
        if modeling.vllm_problem() != modeling.VLLM_IMPORTS_FINE:  # CI: no vLLM, so the next check stops
            with pytest.raises(modeling.VLLMUnavailableError, match="does not import in this environment"):
                modeling.require_vllm(None, profile)
    finally:
        server.shutdown()


# --- the trl backend's pieces ----------------------------------------------------------------------------

def test_finish_trainer_makes_lora_trainable_again_after_kbit_preparation(tiny_model_dir):
    """TRL 0.22.2 runs peft's prepare_model_for_kbit_training on a 4-bit PeftModel on a GPU, freezing the LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    prepare_model_for_kbit_training(model)  # what TRL's prepare_peft_model does to the model it is given
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    assert lora and not any(p.requires_grad for p in lora)
    trl_profile = PROFILES["tiny"].replace(backend="trl")
    assert backends.finish_trainer(SimpleNamespace(model=model), trl_profile) == len(lora)
    assert all(p.requires_grad for p in lora)
    assert backends.finish_trainer(SimpleNamespace(model=model), PROFILES["tiny"]) == 0  # Unsloth's: untouched


def test_release_engine_closes_the_server_communicator_and_drops_a_colocated_llm(monkeypatch):
    closed = []
    client = SimpleNamespace(pynccl_comm=object(), close_communicator=lambda: closed.append(True))
    llm = object()
    trainer = SimpleNamespace(vllm_client=client, llm=llm, model=SimpleNamespace())
    backends.release_engine(trainer)
    assert closed == [True] and client.pynccl_comm is None and trainer.llm is None
    backends.release_engine(trainer)  # twice (a rebuild, then the end of train_grpo): nothing more to close
    assert closed == [True]
    engine = object()  # Unsloth's: the model owns the engine, which later trainers reuse
    unsloth = SimpleNamespace(llm=engine, model=SimpleNamespace(vllm_engine=engine))
    backends.release_engine(unsloth)
    assert unsloth.llm is engine
    backends.release_engine(SimpleNamespace(model=None))  # HF generate: no engine at all


def test_a_results_card_error_is_one_line_and_status_1(monkeypatch, capsys):
    from grpo_helpers import results_card

    def no_metrics(args, profile):
        raise results_card.CardError("No metrics.csv: run notebook 04 (or `python -m grpo_helpers train`) first.")

    monkeypatch.setitem(commands.COMMANDS, "evaluate", no_metrics)
    assert commands.run(SimpleNamespace(command="evaluate"), PROFILES["tiny"]) == commands.FAILED_EXIT
    assert capsys.readouterr().err.strip().endswith("error: No metrics.csv: run notebook 04 (or `python -m "
                                                    "grpo_helpers train`) first.")


def test_zero3_refuses_the_watch(monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ProfileError, match="watch_questions=0"):
        backends.check_engine(PROFILES["tiny"])
    backends.check_engine(PROFILES["tiny"].replace(watch_questions=0))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    backends.check_engine(PROFILES["tiny"])


def test_state_digest_sees_every_byte():
    import torch

    weights = {"a": torch.zeros(3, dtype=torch.bfloat16), "b": torch.arange(4.0)}
    same = backends.state_digest({"b": torch.arange(4.0), "a": torch.zeros(3, dtype=torch.bfloat16)})
    assert backends.state_digest(weights) == same
    weights["a"][1] = 1e-3
    assert backends.state_digest(weights) != same
    assert backends.state_digest({"a": torch.zeros(3), "b": torch.arange(4.0)}) != same  # dtype counts


# --- configs/ -----------------------------------------------------------------------------------------------

def _filler():
    """transformers' Trainer logic that fills DeepSpeed's "auto" values, on accelerate's config class.

    transformers defines it on top of DeepSpeed's own class, which needs DeepSpeed installed; the methods
    used here only read and write the config dict."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class Filler(HfDeepSpeedConfig):
        def __init__(self, config):
            super().__init__(config)
            self._dtype, self.mismatches = None, []

    for name, member in vars(HfTrainerDeepSpeedConfig).items():
        if not name.startswith("__"):  # dtype, is_auto, fill_match, fill_only, trainer_config_process/finalize
            setattr(Filler, name, member)
    return Filler


def _autos(node) -> list:
    if isinstance(node, dict):
        return [a for value in node.values() for a in _autos(value)]
    return [node] if node == "auto" else []


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")])
def test_accelerate_configs_load_and_deepspeed_autos_are_all_filled_from_the_profile(name, kind, monkeypatch, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin
    from trl.trainer.grpo_config import GRPOConfig

    monkeypatch.chdir(REPO)  # the configs name their DeepSpeed JSON relative to the repository root
    config = load_config_from_file(f"configs/accelerate/{name}.yaml")
    assert config.distributed_type.name == kind and config.num_machines == 1
    if kind != "DEEPSPEED":
        assert config.mixed_precision == "no"  # the profile's fp16/bf16 decides
        return
    assert config.mixed_precision is None  # with a DeepSpeed JSON, accelerate refuses one here
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(config.deepspeed_config))  # as the launcher sets it
    json_file = config.deepspeed_config["deepspeed_config_file"]
    plugin = DeepSpeedPlugin(hf_ds_config=json_file)  # accelerate's own checks of the file and the YAML
    stage = int(name[-1])
    assert plugin.zero_stage == stage and plugin.hf_ds_config.is_zero3() == (stage == 3)
    with monkeypatch.context() as launched:  # the environment accelerate launch gives each process
        launched.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        launched.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", json_file)
        assert backends.deepspeed_zero_stage() == stage  # load_trl_model places no device_map under ZeRO-3
    for profile in (MULTI, KAGGLE):
        args = GRPOConfig(**{**grpo_config.grpo_config_values(profile, tmp_path), **backends.engine_config_values(profile)})
        args.fp16, args.bf16 = profile.dtype == "float16", profile.dtype == "bfloat16"  # as on their GPUs
        filled = _filler()(json.loads(Path(json_file).read_text()))
        filled.trainer_config_process(args)
        filled.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=4096)), 250)
        assert not _autos(filled.config) and not filled.mismatches
        assert filled.config["train_micro_batch_size_per_gpu"] == profile.per_device_train_batch_size
        assert filled.config["gradient_clipping"] == profile.max_grad_norm
        assert filled.config["bf16"]["enabled"] == (profile.dtype == "bfloat16")
        assert filled.config["fp16"]["enabled"] == (profile.dtype == "float16")
