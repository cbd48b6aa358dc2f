"""The training backend without Unsloth (TRL + PEFT, QLoRA through bitsandbytes) and the process-rank helpers.

Unsloth trains on one GPU; `accelerate launch` (DDP, DeepSpeed ZeRO-2/3) runs TRL's own GRPOTrainer in
several processes. A profile picks its backend (`Profile.backend`); under several processes the backend
is always "trl". Generation is TRL's vLLM, colocated in each process or a `trl vllm-serve` server on a
GPU of its own (`Profile.vllm_mode`). Unsloth patches TRL and transformers when it is imported, so the
"trl" backend runs only in a process that has not imported it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import hashlib
import json
import os
import shlex
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from .profiles import Profile, ProfileError
from .runtime import NotebookStop

BACKENDS = ("unsloth", "trl")
VLLM_MODES = ("colocate", "server")
VLLM_HEALTH_PATH = "/health/"  # what TRL's VLLMClient.check_server asks, every 2 s until its timeout
HEALTH_RETRY_S = 2.0  # TRL's retry interval
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The variables torchrun (accelerate launch --multi_gpu / DeepSpeed) and MPI set in every process.
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LOCAL_RANK_VARS = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
CPU_LAUNCH_FIX = ("accelerate launch --multi_gpu --num_processes N -m grpo_helpers train ... (torchrun's "
                  "launcher; on a machine without a GPU the processes talk over gloo)")


class VLLMServerUnreachableError(NotebookStop):
    """The profile generates through a TRL vLLM server and none answers at its host and port."""


# --- processes -------------------------------------------------------------------------------------

def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def world_size() -> int:
    """How many training processes this run has (1 outside `accelerate launch` / torchrun / MPI)."""
    return max(_env_int(WORLD_SIZE_VARS, 1), 1)


def process_rank() -> int:
    """This process's global rank (0 when alone)."""
    return _env_int(RANK_VARS, 0)


def local_rank() -> int:
    """This process's rank on its machine: the GPU it trains on."""
    return _env_int(LOCAL_RANK_VARS, 0)


def is_main_process() -> bool:
    """True in the one process that writes checkpoints, metrics and the adapter (rank 0)."""
    return process_rank() == 0


def prepare_processes() -> None:
    """Before accelerate's state exists: CPU processes use the device "cpu", not accelerate 1.10.1's "cpu:<rank>",
    which the Trainer's resume passes to torch.load as map_location and torch.load refuses."""
    if world_size() > 1 and not _cuda_available():
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _distributed_state() -> Any:
    from accelerate import PartialState  # sets up the process group as accelerate launch configured it

    prepare_processes()
    return PartialState()


def wait_for_everyone() -> None:
    """A barrier across the training processes (nothing when alone)."""
    if world_size() > 1:
        _distributed_state().wait_for_everyone()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (e.g. builds a cache), then the others."""
    if world_size() == 1:
        yield
        return
    with _distributed_state().main_process_first():
        yield


def main_process_value(value: Any) -> Any:
    """The main process's `value` in every process, so that all of them take the same branch."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    _distributed_state()
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def single_process_from_multi_process_launch() -> bool:
    """True when `accelerate launch --cpu --num_processes N` (N > 1) started one process: accelerate 1.10.1 runs
    several CPU processes only through MPI, else starts one and sets MASTER_PORT, only when more were asked for."""
    return (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1") and "MASTER_PORT" in os.environ
            and world_size() == 1 and "LOCAL_RANK" not in os.environ)


# --- which backend, and its GRPOConfig values --------------------------------------------------------

def backend_for(profile: Profile) -> str:
    """The backend that trains: the profile's, except that several processes always use "trl" (Unsloth cannot)."""
    return "trl" if world_size() > 1 else profile.backend


def check_engine(profile: Profile) -> None:
    """A ProfileError, naming the valid choices, for engine settings that cannot run together."""
    if profile.backend not in BACKENDS:
        raise ProfileError(f"backend={profile.backend!r} is not a backend. Valid backends: 'unsloth' (one GPU, "
                           "Unsloth's kernels and in-process vLLM) or 'trl' (TRL + PEFT, runs under accelerate launch).")
    if profile.vllm_mode not in VLLM_MODES:
        raise ProfileError(f"vllm_mode={profile.vllm_mode!r} is not a vLLM mode. Valid modes: 'colocate' (vLLM in "
                           "each training process) or 'server' (a `trl vllm-serve` server on a GPU of its own).")
    if not 0 < profile.vllm_server_port < 65536 or profile.vllm_server_timeout_s <= 0:
        raise ProfileError(f"vllm_server_port must be 1-65535 and vllm_server_timeout_s above 0, not "
                           f"{profile.vllm_server_port} and {profile.vllm_server_timeout_s}.")
    if deepspeed_zero_stage() == 3 and profile.watch_questions > 0:
        raise ProfileError(f"The held-out watch (watch_questions={profile.watch_questions}) generates in the main "
                           "process only, and under DeepSpeed ZeRO-3 every forward pass needs all processes: it "
                           "would hang. Set watch_questions=0 (--set watch_questions=0), or use ZeRO-2 or DDP.")
    backend = backend_for(profile)
    if backend == "unsloth" and profile.fast_inference and profile.vllm_mode == "server":
        raise ProfileError("vllm_mode='server' needs backend='trl': Unsloth generates with its own in-process vLLM. "
                           "Set backend=trl, or vllm_mode=colocate.")
    if backend == "trl" and profile.fast_inference and profile.load_in_4bit:
        raise ProfileError(
            "backend 'trl' with vLLM (fast_inference=True) cannot train a 4-bit model: TRL 0.22.2 sends vLLM the "
            "merged weights of the bitsandbytes layers, which vLLM cannot load (huggingface/trl#4973). Set "
            "load_in_4bit=False (16-bit weights), or fast_inference=False (QLoRA with HF generate).")


def engine_config_values(profile: Profile) -> dict[str, Any]:
    """GRPOConfig values the backend decides; {} for Unsloth (its trainer uses the model's own vLLM engine)."""
    if backend_for(profile) != "trl":
        return {}
    return {
        "use_vllm": profile.fast_inference,
        "vllm_mode": profile.vllm_mode,
        "vllm_gpu_memory_utilization": profile.gpu_memory_utilization,  # colocate; a server takes its own flag
        "vllm_server_host": profile.vllm_server_host,
        "vllm_server_port": profile.vllm_server_port,
        "vllm_server_timeout": profile.vllm_server_timeout_s,
        # add_trl_lora sets checkpointing up; TRL 0.22.2's own skips making the inputs require grad for a
        # 4-bit model, and the loss then has no gradient
        "gradient_checkpointing": False,
        "ddp_find_unused_parameters": False,  # every LoRA weight gets a gradient each step: no search needed
    }


def require_plain_trl() -> None:
    """Refuse the "trl" backend in a process where Unsloth has patched TRL and transformers already."""
    if "unsloth" in sys.modules:
        raise ProfileError("backend 'trl' needs a Python process that has not imported Unsloth (it patches TRL "
                           "and transformers on import): run `python -m grpo_helpers train ...`, or restart the "
                           "notebook's runtime and choose the profile before anything loads a model.")


# --- the vLLM server ---------------------------------------------------------------------------------

def vllm_server_url(profile: Profile) -> str:
    """http://host:port of the profile's TRL vLLM server."""
    return f"http://{profile.vllm_server_host}:{profile.vllm_server_port}"


def vllm_serve_command(profile: Profile, model: str) -> list[str]:
    """The `trl vllm-serve` command for the profile's model, host, port, memory share, dtype and length."""
    return ["trl", "vllm-serve", "--model", model, "--host", profile.vllm_server_host,
            "--port", str(profile.vllm_server_port), "--gpu_memory_utilization", str(profile.gpu_memory_utilization),
            "--dtype", profile.dtype, "--max_model_len", str(profile.max_seq_length)]


def check_vllm_server(profile: Profile, retry_s: float = HEALTH_RETRY_S) -> None:
    """Wait up to vllm_server_timeout_s for the server's /health/ (as TRL does); a clear error if it never answers."""
    url = vllm_server_url(profile) + VLLM_HEALTH_PATH
    deadline = time.monotonic() + profile.vllm_server_timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(min(5.0, deadline - time.monotonic()), 0.1)) as response:
                if response.status == 200:
                    return
                why = f"HTTP {response.status}"
        except (OSError, ValueError) as exc:  # URLError, refused, timed out, a bad host
            why = " ".join(str(getattr(exc, "reason", exc)).split())
        left = deadline - time.monotonic()
        if left <= 0:
            raise vllm_server_unreachable(profile, why)
        time.sleep(min(retry_s, left))


def vllm_server_unreachable(profile: Profile, why: str) -> VLLMServerUnreachableError:
    """The error for a server that did not answer: where we looked, for how long, and what to do."""
    where = f"{profile.vllm_server_host}:{profile.vllm_server_port}"
    return VLLMServerUnreachableError(
        f"No TRL vLLM server answers at {where} ({vllm_server_url(profile)}{VLLM_HEALTH_PATH}: {why}) after "
        f"{profile.vllm_server_timeout_s:g} s. Start it first on a GPU of its own: CUDA_VISIBLE_DEVICES=0 python -m "
        f"grpo_helpers vllm-serve --profile {profile.name} (it runs `trl vllm-serve --model ... --port "
        f"{profile.vllm_server_port}`), wait for 'Application startup complete', then launch training on the "
        "other GPUs (CUDA_VISIBLE_DEVICES=1,...). A server elsewhere: --set vllm_server_host=HOST "
        "vllm_server_port=PORT; a slow start: --set vllm_server_timeout_s=600; no server: --set vllm_mode=colocate.")


def release_engine(trainer: Any) -> None:
    """Let a later trainer in this process generate: close TRL's vLLM server communicator, free a colocated LLM.

    TRL 0.22.2 opens the server's weight-update group per trainer and closes it at exit; the server refuses a second.
    A colocated LLM is dropped (untested on a GPU: vLLM may keep memory); Unsloth's model.vllm_engine is left alone."""
    client = getattr(trainer, "vllm_client", None)
    if client is not None and getattr(client, "pynccl_comm", None) is not None:
        client.close_communicator()  # the server's side; then ours
        client.pynccl_comm = None
        atexit.unregister(client.close_communicator)
    llm = getattr(trainer, "llm", None)
    if llm is None or llm is getattr(getattr(trainer, "model", None), "vllm_engine", None):
        return
    trainer.llm = llm = None
    gc.collect()
    if _cuda_available():
        sys.modules["torch"].cuda.empty_cache()


def require_vllm_engine(profile: Profile) -> None:
    """For the "trl" backend with vLLM in server mode: the server answers (modeling.require_vllm checks vLLM imports)."""
    if profile.fast_inference and profile.vllm_mode == "server":
        check_vllm_server(profile)


# --- model and adapter ---------------------------------------------------------------------------------

def deepspeed_zero_stage() -> int | None:
    """The ZeRO stage accelerate launch set up (its config, or the DeepSpeed JSON it names); None without DeepSpeed."""
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
    if stage.isdigit():
        return int(stage)
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true" or config_file == "none":
        return None
    return int(json.loads(Path(config_file).read_text()).get("zero_optimization", {}).get("stage", 0))


_ZERO3_LOADING: list[Any] = []  # keeps accelerate's DeepSpeed plugin, and so transformers' ZeRO-3 config, alive


def zero3_loading_config() -> Any:
    """accelerate's DeepSpeed plugin registered for from_pretrained (zero.Init: each process loads only its shard),
    as TrainingArguments does later. Untested here (no DeepSpeed or GPU in CI)."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    plugin.set_deepspeed_weakref()
    return plugin


def load_trl_model(profile: Profile, path: str) -> tuple[Any, Any]:
    """(model, tokenizer) with transformers: 4-bit nf4 through bitsandbytes (QLoRA) when the profile says so."""
    require_plain_trl()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = getattr(torch, profile.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if profile.load_in_4bit:  # quant storage in the compute dtype: DeepSpeed's documented QLoRA + ZeRO-3 recipe
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # bitsandbytes and zero.Init place weights on the current device
        if deepspeed_zero_stage() != 3:  # each process loads its whole model onto its own GPU
            kwargs["device_map"] = {"": local_rank()}
    if deepspeed_zero_stage() == 3:
        _ZERO3_LOADING.append(zero3_loading_config())  # from_pretrained shards as it loads (zero.Init)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if profile.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # add_trl_lora does it
    return model, tokenizer


def add_trl_lora(model: Any, profile: Profile) -> Any:
    """PEFT LoRA adapters as the profile says, initialised from the profile's seed (the same on every rank)."""
    import torch
    from peft import LoraConfig, get_peft_model

    if profile.use_gradient_checkpointing:  # "unsloth" (offloaded) is Unsloth's own: here HF recomputes
        # The reentrant kind, transformers' default: TRL 0.22.2 turns checkpointing off for each generation and
        # back on with the default, so that is what trains. It needs inputs that require grad.
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
        model.config.use_cache = False
    torch.manual_seed(profile.seed)
    config = LoraConfig(r=profile.lora_rank, lora_alpha=profile.lora_alpha, lora_dropout=0.0, bias="none",
                        target_modules=list(profile.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def finish_trainer(trainer: Any, profile: Profile) -> int:
    """Make the LoRA weights trainable again after TRL 0.22.2 re-prepared a 4-bit PeftModel; how many were frozen.

    Its prepare_peft_model runs prepare_model_for_kbit_training, freezing every parameter (optimizer built at train())."""
    if backend_for(profile) != "trl":
        return 0
    frozen = [p for name, p in trainer.model.named_parameters() if "lora_" in name and not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    return len(frozen)


def state_digest(tensors: Mapping[str, Any]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensors[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def zero3_lora_weights(model: Any) -> dict[str, Any]:
    """Under ZeRO-3, in every process (a collective): the whole LoRA weights by state-dict name, gathered.

    Each process holds only its partition (empty tensors elsewhere). Untested here: no DeepSpeed or GPU in CI."""
    import deepspeed

    named = {name: param for name, param in model.named_parameters() if "lora_" in name}
    with deepspeed.zero.GatheredParameters(list(named.values()), modifier_rank=None):
        return {name: param.detach().to("cpu", copy=True) for name, param in named.items()}


def lora_digest(model: Any) -> str:
    """The digest of the LoRA weights this process holds (what PEFT's save_pretrained writes); gathered under ZeRO-3."""
    from peft import get_peft_model_state_dict

    gathered = zero3_lora_weights(model) if deepspeed_zero_stage() == 3 else None  # None: model.state_dict()
    return state_digest(get_peft_model_state_dict(model, state_dict=gathered))


def save_zero3_adapter(model: Any, tokenizer: Any, directory: Path) -> None:
    """Under ZeRO-3, in every process: gather the LoRA weights (else empty partitions), the main process saves them."""
    weights = zero3_lora_weights(model)  # PEFT's save_pretrained(state_dict=) keeps the adapter's entries
    if is_main_process():
        model.save_pretrained(str(directory), state_dict=weights)
        tokenizer.save_pretrained(str(directory))


def saved_adapter_digest(adapter_dir: str | Path) -> str:
    """The digest of a saved adapter's weights file."""
    from safetensors.torch import load_file

    return state_digest(load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS)))


def verify_saved_adapter(model: Any, adapter_dir: str | Path) -> str:
    """In every process: its LoRA weights equal the adapter the main process saved; returns their digest."""
    wait_for_everyone()  # the main process has written the adapter
    held, saved = lora_digest(model), saved_adapter_digest(adapter_dir)
    if held != saved:
        raise RuntimeError(f"Process {process_rank()} of {world_size()} holds LoRA weights (sha256 {held[:16]}) "
                           f"that differ from the adapter saved in {adapter_dir} ({saved[:16]}): the processes "
                           "did not train in step. Train again; if it repeats, report it with both digests.")
    return held


def shell_line(command: list[str]) -> str:
    """A command as one line to paste into a shell."""
    return shlex.join(command)
