"""Load the model (4-bit, LoRA) and report its size and memory.

Backend "unsloth": Unsloth's FastLanguageModel (one GPU, its kernels and vLLM). Backend "trl":
transformers + PEFT (grpo_helpers.backends), for TRL's trainer under accelerate launch."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import backends, paths, runtime, tiny
from .generation import uses_vllm
from .profiles import PROFILES, TINY_MODEL_NAME, Profile

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_INFO_FILE = "adapter_info.json"  # the card training.train_grpo writes next to the adapter
TRAIN_NOTEBOOK = "notebooks/04_train_grpo.ipynb"
STANDBY_ENV = "UNSLOTH_VLLM_STANDBY"  # unsloth_zoo reads it once, when it is first imported
VLLM_IMPORTS_FINE = "vLLM imported fine but Unsloth loaded the model without it"


class VLLMUnavailableError(runtime.NotebookStop):
    """The profile asks for vLLM (fast_inference) but the model has no vLLM engine."""


def import_unsloth(profile: Profile | None = None) -> Any:
    """Import Unsloth before transformers/TRL touch the model (it patches them), and return it.

    With a profile, $UNSLOTH_VLLM_STANDBY is set first as its `vllm_standby` says: Unsloth reads it
    at import time, so it has to be in place before the first `import unsloth`."""
    if profile is not None:
        set_vllm_standby(profile.vllm_standby)
    import unsloth  # noqa: F401  (the import itself applies Unsloth's patches)

    return unsloth


def set_vllm_standby(wanted: bool) -> None:
    """Set $UNSLOTH_VLLM_STANDBY=1 before Unsloth's first import; warn when Unsloth already runs otherwise."""
    if "unsloth" not in sys.modules and "unsloth_zoo" not in sys.modules:
        if wanted:
            os.environ[STANDBY_ENV] = "1"
        return
    active = os.environ.get(STANDBY_ENV, "0") == "1"  # what Unsloth read at import, unless changed since
    if active != wanted:
        warnings.warn(f"Unsloth was imported with {STANDBY_ENV}={'1' if active else '0'}, but the profile asks for "
                      f"vllm_standby={wanted}: it takes effect only after a runtime restart (Colab: Runtime > "
                      "Restart session, then run the notebook from the top).", stacklevel=3)


def vllm_problem() -> str:
    """Why there is no vLLM engine: the error `import vllm` gives, else VLLM_IMPORTS_FINE."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (any import failure is the answer)
        return f"{type(exc).__name__}: {exc}"
    return VLLM_IMPORTS_FINE


def vllm_unavailable(profile: Profile) -> VLLMUnavailableError:
    """The error for a profile that asks for vLLM when the model has none: why, and what to do."""
    return VLLMUnavailableError(
        f"Profile {profile.name!r} asks for vLLM (fast_inference=True), but the model has no vLLM engine "
        f"({vllm_problem()}). Stopping here rather than sampling about 10x slower with HF generate. "
        "On Colab: Runtime > Restart session, then run cell 1 again (it installs the pinned vLLM) and the "
        "notebook from the top. Or go on without vLLM: profile = profile.replace(fast_inference=False) "
        "(about 10x slower generation, so set fewer max_steps / eval questions).")


def require_vllm(model: Any, profile: Profile) -> None:
    """Raise VLLMUnavailableError when the profile asks for vLLM and the model was loaded without it.

    Backend "trl": TRL's trainer starts vLLM itself, so vLLM must import here and, in server mode,
    the server must answer (backends.VLLMServerUnreachableError otherwise)."""
    if backends.backend_for(profile) == "trl":
        if profile.fast_inference:
            backends.require_vllm_engine(profile)
            problem = vllm_problem()
            if problem != VLLM_IMPORTS_FINE:
                raise VLLMUnavailableError(
                    f"Profile {profile.name!r} generates with TRL's vLLM (vllm_mode={profile.vllm_mode!r}), but vLLM "
                    f"does not import in this environment ({problem}). Install vLLM next to TRL here, or train "
                    "without it: --set fast_inference=false (HF generate, about 10x slower).")
        return
    if profile.fast_inference and not uses_vllm(model):
        raise vllm_unavailable(profile)


def prepare_backend(profile: Profile) -> None:
    """Before TRL builds anything: Unsloth imported for its backend (it patches TRL); never for "trl"."""
    if backends.backend_for(profile) == "trl":
        backends.require_plain_trl()
    else:
        import_unsloth()


def model_path(profile: Profile) -> str:
    """The Hub id to download, or the local folder of the tiny model (built on first use)."""
    if profile.model_name == TINY_MODEL_NAME:
        with backends.main_process_first():  # one process builds it, the others then read it
            return str(tiny.ensure_tiny_model(spec=tiny.TinySpec(warm_start_steps=profile.warm_start_steps)))
    return profile.model_name


def load_base_model(profile: Profile) -> tuple[Any, Any]:
    """(model, tokenizer) for the profile, without LoRA: 4-bit and vLLM as the profile says.

    A profile with fast_inference gets a model with a vLLM engine or a VLLMUnavailableError."""
    if profile.requires_gpu:
        runtime.require_cuda(f"Loading {profile.model_name}")
    backends.check_engine(profile)
    if backends.backend_for(profile) == "trl":
        model, tokenizer = backends.load_trl_model(profile, model_path(profile))
        require_vllm(model, profile)
        return model, tokenizer
    import_unsloth(profile)
    import torch
    from unsloth import FastLanguageModel

    kwargs: dict[str, Any] = {}
    if profile.fast_inference:  # vLLM's own knobs; the CPU backend has no vLLM
        kwargs = {"max_lora_rank": profile.lora_rank, "gpu_memory_utilization": profile.gpu_memory_utilization}
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_path(profile),
            max_seq_length=profile.max_seq_length,
            load_in_4bit=profile.load_in_4bit,
            fast_inference=profile.fast_inference,
            dtype=getattr(torch, profile.dtype),
            **kwargs,
        )
    except (ImportError, NotImplementedError) as exc:  # Unsloth's "Please install vLLM..." / "...needs a GPU"
        if profile.fast_inference and vllm_problem() != VLLM_IMPORTS_FINE:
            raise vllm_unavailable(profile) from exc
        raise
    require_vllm(model, profile)  # Unsloth may also fall back to HF generate with only a printed line
    return model, tokenizer


def add_lora(model: Any, profile: Profile) -> Any:
    """Attach fresh LoRA adapters as the profile says (rank, alpha, target projections)."""
    if backends.backend_for(profile) == "trl":
        return backends.add_trl_lora(model, profile)
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(
        model,
        r=profile.lora_rank,
        lora_alpha=profile.lora_alpha,
        target_modules=list(profile.lora_target_modules),
        use_gradient_checkpointing=profile.use_gradient_checkpointing,
        random_state=profile.seed,
    )


def load_model(profile: Profile) -> tuple[Any, Any]:
    """(model with fresh LoRA adapters, tokenizer): what notebook 01 shows and notebook 04 trains."""
    model, tokenizer = load_base_model(profile)
    return add_lora(model, profile), tokenizer


def parameter_counts(model: Any) -> dict[str, float]:
    """Trainable and total parameters (4-bit weights counted as the numbers they store)."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if param.__class__.__name__ == "Params4bit":  # packed two 4-bit numbers per byte
            count *= 2
        total += count
        trainable += count if param.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}


def memory_in_use_gb(gpu: bool | None = None) -> tuple[float, float]:
    """(in use, total) GB: the whole GPU (vLLM allocates outside torch's counter), else this process's RSS.

    `gpu=None` asks torch; pass False where no CUDA context may be created (a parent of vLLM processes)."""
    import psutil
    import torch

    if torch.cuda.is_available() if gpu is None else gpu:
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 1024**3, total / 1024**3
    return psutil.Process(os.getpid()).memory_info().rss / 1024**3, psutil.virtual_memory().total / 1024**3


def torch_peak_gb() -> float | None:
    """Peak GPU memory torch itself allocated since the last reset (None without a GPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None


def memory_report(model: Any | None = None) -> dict[str, float | str]:
    """Memory in use now: GPU allocated/reserved/total (GB) on CUDA, process RSS on CPU."""
    import psutil
    import torch

    report: dict[str, float | str] = {"process_rss_gb": round(psutil.Process(os.getpid()).memory_info().rss / 1024**3, 2)}
    if torch.cuda.is_available():
        report.update(
            device=torch.cuda.get_device_name(0),
            gpu_allocated_gb=round(torch.cuda.memory_allocated() / 1024**3, 2),
            gpu_reserved_gb=round(torch.cuda.memory_reserved() / 1024**3, 2),
            gpu_peak_gb=round(torch.cuda.max_memory_allocated() / 1024**3, 2),
            gpu_total_gb=round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 2),
        )
    else:
        report["device"] = "cpu"
    if model is not None and hasattr(model, "get_memory_footprint"):
        report["model_weights_gb"] = round(model.get_memory_footprint() / 1024**3, 4)
    return report


def describe_model(model: Any) -> str:
    """A two-line summary: parameters (trainable share) and memory."""
    counts = parameter_counts(model)
    mem = memory_report(model)
    where = (f"GPU {mem['gpu_allocated_gb']} GB allocated of {mem['gpu_total_gb']} GB" if "gpu_total_gb" in mem
             else f"CPU process RSS {mem['process_rss_gb']} GB")
    return (f"Parameters: {counts['total']:,.0f} total, {counts['trainable']:,.0f} trainable LoRA "
            f"({counts['trainable_percent']:.2f}%)\nMemory: weights {mem.get('model_weights_gb', '?')} GB; {where}")


def save_adapter(model: Any, tokenizer: Any, directory: Path | str) -> str:
    """Save only the LoRA adapter (its size: sizes.adapter_bytes) and the tokenizer to `directory`."""
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return str(directory)


# --- the trained adapter from notebook 04 ---------------------------------------------------------

class AdapterNotFoundError(FileNotFoundError):
    """No trained LoRA adapter where notebook 04 saves it."""


def _has_adapter(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG_FILE).is_file() and any((directory / f).is_file() for f in ADAPTER_WEIGHT_FILES)


def find_adapter(profile: Profile, adapter_dir: Path | str | None = None) -> Path:
    """The folder of the LoRA adapter notebook 04 saved for this profile; a clear error when it is missing."""
    directory = Path(adapter_dir).expanduser() if adapter_dir else paths.adapter_dir(profile.name)
    if _has_adapter(directory):
        return directory
    hints = []
    checkpoints = paths.checkpoints_dir(profile.name)
    if checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*")):
        hints.append(f"{checkpoints} holds checkpoints, so a training run stopped before the end: "
                     f"re-run {TRAIN_NOTEBOOK}, it resumes from the newest one.")
    others = [name for name in PROFILES
              if name != profile.name and _has_adapter(paths.artifacts_dir() / name / "lora_adapter")]
    if others and not adapter_dir:
        hints.append(f"There is an adapter for profile {others[0]!r}: set PROFILE = {others[0]!r} to evaluate that one.")
    raise AdapterNotFoundError(
        f"No trained LoRA adapter in {directory} (expected {ADAPTER_CONFIG_FILE} and "
        f"{ADAPTER_WEIGHT_FILES[0]}). Run {TRAIN_NOTEBOOK} first (same profile, same artifacts folder / Drive): "
        f"it saves the adapter there. This run: profile {profile.name!r}, artifacts folder "
        f"{paths.artifacts_dir()} (${paths.ARTIFACTS_ENV}, else Google Drive when mounted, else ./outputs). "
        f"From a terminal: python -m grpo_helpers train --profile {profile.name}."
        + "".join(" " + h for h in hints))


@dataclass
class TrainedModel:
    """The base model with notebook 04's adapter loaded: `use_adapter=False` generation is the base model."""

    model: Any
    tokenizer: Any
    adapter_dir: Path
    lora_request: Any = None  # vLLM's LoRARequest for fast_generate (None on the HF path)
    info: dict[str, Any] = field(default_factory=dict)  # adapter_info.json, when notebook 04 wrote one


def load_adapter_weights(model: Any, adapter_dir: Path | str) -> int:
    """Copy a saved adapter's LoRA weights into a PeftModel of the same shape; returns how many tensors."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(adapter_dir), device="cpu")
    result = set_peft_model_state_dict(model, weights, adapter_name="default")
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]  # would stay untrained
    if not weights or unexpected or missing:
        raise ValueError(f"The adapter in {adapter_dir} does not fit this model ({len(weights)} tensors; "
                         f"unexpected: {unexpected[:2]}, missing: {missing[:2]}).")
    return len(weights)


def load_trained_model(profile: Profile, adapter_dir: Path | str | None = None) -> TrainedModel:
    """The profile's base model plus notebook 04's adapter (its rank, alpha and targets), ready to generate.

    Backend "trl" generates with HF generate: TRL's vLLM belongs to its trainer."""
    directory = find_adapter(profile, adapter_dir)
    config = json.loads((directory / ADAPTER_CONFIG_FILE).read_text())
    info_path = directory / ADAPTER_INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("profile") not in (None, profile.name):
        warnings.warn(f"The adapter in {directory} was trained with profile {info['profile']!r}, "
                      f"not {profile.name!r}.", stacklevel=2)
    targets = config.get("target_modules") or profile.lora_target_modules
    shape = profile.replace(lora_rank=int(config.get("r", profile.lora_rank)),
                            lora_alpha=int(config.get("lora_alpha", profile.lora_alpha)),
                            lora_target_modules=tuple(sorted(targets)) if not isinstance(targets, str) else targets)
    if backends.backend_for(shape) == "trl":
        shape = shape.replace(fast_inference=False)
    model, tokenizer = load_base_model(shape)  # vLLM's max_lora_rank must fit the adapter's rank
    model = add_lora(model, shape)
    load_adapter_weights(model, directory)
    if backends.backend_for(shape) == "trl":
        model.eval()
        return TrainedModel(model, tokenizer, directory, None, info)
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)
    # vLLM holds only the base weights; the LoRA reaches it per request (Unsloth's load_lora).
    lora_request = model.load_lora(str(directory)) if uses_vllm(model) else None
    return TrainedModel(model, tokenizer, directory, lora_request, info)
