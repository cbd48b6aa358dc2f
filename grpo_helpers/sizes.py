"""Sizes computed from a model's shapes: parameters, LoRA, adapter, checkpoints, merged and GGUF exports.

Every size a notebook states comes from here. Units are decimal (1 GB = 10**9 bytes, as disks and
Google Drive's "15 GB" are sold). Exact: parameter counts, the adapter, the merged 16-bit model, the
fp32/8-bit optimizer state. Estimates (labelled so): GGUF quantised files, the small files of a
checkpoint or export (tokenizer, trainer state), and the in-memory 4-bit weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .profiles import TINY_MODEL_NAME, Profile

# Llama-3.1-8B-Instruct's config.json (meta-llama/Llama-3.1-8B-Instruct; unsloth's copy is the same
# shape). A plain dict: `transformers.LlamaConfig(**LLAMA_31_8B_CONFIG)` builds the architecture.
LLAMA_31_8B_CONFIG: dict[str, Any] = {
    "_name_or_path": "meta-llama/Llama-3.1-8B-Instruct",
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {name.lower(): LLAMA_31_8B_CONFIG for name in (
    "unsloth/Meta-Llama-3.1-8B-Instruct", "unsloth/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Meta-Llama-3.1-8B-Instruct", "unsloth/meta-llama-3.1-8b-instruct-bnb-4bit")}

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# LoRA weights are trained and saved in fp32: PEFT upcasts adapters of a 16-bit model to fp32
# (autocast_adapter_dtype) and Unsloth patches LoraLayer so "mixed precision needs float32";
# save_pretrained writes them as they are. Checked: the tiny adapter is 4 bytes per parameter.
LORA_WEIGHT_BYTES = 4
FP32_ADAM_BYTES = 8.0  # adamw_torch: exp_avg + exp_avg_sq, fp32 each
# bitsandbytes 8-bit Adam (adamw_8bit, paged_adamw_8bit): two uint8 moments plus one fp32 absmax
# per 256-element block for each; tensors under 4096 elements keep 32-bit state (its min_8bit_size).
BNB_8BIT_ADAM_BYTES = 2.0 + 2 * 4 / 256
BNB_MIN_8BIT_SIZE = 4096
# bitsandbytes nf4 with double quantisation (Unsloth's bnb-4bit checkpoints): half a byte per weight,
# an 8-bit absmax per 64 weights, an fp32 second-level scale per 256 such blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Estimates: Llama 3.1's tokenizer.json is 9.1 MB; a checkpoint adds the scheduler, RNG state,
# training args and trainer_state.json (a log line per step), about 1 MB together.
TOKENIZER_FILES_BYTES = 10_000_000
CHECKPOINT_SMALL_FILES_BYTES = TOKENIZER_FILES_BYTES + 1_000_000
# transformers' default max_shard_size: an Unsloth GPU merge rewrites one shard at a time through a
# temporary file in the target folder, so the merge briefly needs one more shard.
SHARD_BYTES = 5_000_000_000

# GGUF: llama.cpp's quantize table (tools/quantize/quantize.cpp, QUANT_OPTIONS) gives whole-file
# sizes in GiB for Llama-3-8B (8,030,261,248 parameters, the shape of Llama 3.1 8B); bits per weight
# are derived from them, so they include the tensors k-quants keep at higher precision. Estimates.
LLAMA3_8B_PARAMETERS = 8_030_261_248
LLAMA_CPP_LLAMA3_8B_GIB = {"q4_k_s": 4.37, "q4_k_m": 4.58, "q5_k_s": 5.21, "q5_k_m": 5.33, "q6_k": 6.14, "q8_0": 7.96}
GGUF_BITS_PER_WEIGHT: dict[str, float] = {
    "f16": 16.0, "bf16": 16.0, "f32": 32.0,
    **{m: gib * 2**30 * 8 / LLAMA3_8B_PARAMETERS for m, gib in LLAMA_CPP_LLAMA3_8B_GIB.items()},
}
# Unsloth's save_pretrained_gguf converts straight to these (convert_hf_to_gguf.py --outtype); any
# other method goes through an f16 GGUF first (bf16 where the GPU has it; same size), then llama-quantize.
GGUF_DIRECT_TYPES = ("f16", "bf16", "f32", "q8_0")
GGUF_METHODS = ("q4_k_m", "q8_0", "f16")  # the ones ArtifactSizes lists

ConfigLike = Mapping[str, Any] | Any  # a config.json dict or a transformers PretrainedConfig


def _get(config: ConfigLike, key: str, default: Any = None) -> Any:
    """One field of a config dict or PretrainedConfig."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def projection_shapes(config: ConfigLike) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each of the seven Llama projections in one decoder layer."""
    hidden, inter = int(_get(config, "hidden_size")), int(_get(config, "intermediate_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads") or heads)
    head_dim = int(_get(config, "head_dim") or hidden // heads)
    q, kv = heads * head_dim, kv_heads * head_dim
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def parameter_counts(config: ConfigLike) -> dict[str, int]:
    """Parameters by part: each projection (one layer), all linear layers, embeddings, lm_head, norms, total."""
    shapes = projection_shapes(config)
    attn_bias, mlp_bias = bool(_get(config, "attention_bias", False)), bool(_get(config, "mlp_bias", False))
    per_projection = {name: i * o + (o if (mlp_bias if name.endswith(("gate_proj", "up_proj", "down_proj"))
                                          else attn_bias) else 0)
                      for name, (i, o) in shapes.items()}
    layers, hidden = int(_get(config, "num_hidden_layers")), int(_get(config, "hidden_size"))
    embed = int(_get(config, "vocab_size")) * hidden
    lm_head = 0 if _get(config, "tie_word_embeddings", False) else embed
    norms = (2 * layers + 1) * hidden
    linear = layers * sum(per_projection.values())
    return {**per_projection, "linear_layers": linear, "embed_tokens": embed, "lm_head": lm_head,
            "norms": norms, "total": linear + embed + lm_head + norms}


def total_parameters(config: ConfigLike) -> int:
    """All parameters of the model (what a merged export stores)."""
    return parameter_counts(config)["total"]


def _lora_tensor_sizes(config: ConfigLike, rank: int, targets: Sequence[str]) -> list[int]:
    """Element counts of every LoRA tensor (A: rank x in, B: out x rank) in the model."""
    shapes = projection_shapes(config)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"sizes knows the seven Llama projections {PROJECTIONS}, not {unknown}")
    layers = int(_get(config, "num_hidden_layers"))
    per_layer = [n for t in targets for n in (rank * shapes[t][0], shapes[t][1] * rank)]
    return per_layer * layers


def lora_parameters(config: ConfigLike, rank: int, targets: Sequence[str]) -> int:
    """LoRA parameters: rank * (in + out) for each targeted projection in each layer."""
    return sum(_lora_tensor_sizes(config, rank, targets))


def adapter_bytes(config: ConfigLike, rank: int, targets: Sequence[str]) -> int:
    """The adapter's weight file (adapter_model.safetensors): its parameters in fp32."""
    return lora_parameters(config, rank, targets) * LORA_WEIGHT_BYTES


def optimizer_state_bytes(config: ConfigLike, rank: int, targets: Sequence[str], optim: str) -> int:
    """The optimizer state a checkpoint saves for the LoRA parameters (optimizer.pt), for a Trainer `optim`."""
    if "8bit" in optim:
        return math.ceil(sum(n * (BNB_8BIT_ADAM_BYTES if n >= BNB_MIN_8BIT_SIZE else FP32_ADAM_BYTES)
                             for n in _lora_tensor_sizes(config, rank, targets)))
    return int(lora_parameters(config, rank, targets) * FP32_ADAM_BYTES)  # adamw_torch and other fp32 Adams


def checkpoint_bytes(config: ConfigLike, profile: Profile) -> int:
    """One Trainer checkpoint: adapter + optimizer state + small files (tokenizer, scheduler, RNG, trainer state)."""
    rank, targets = profile.lora_rank, profile.lora_target_modules
    return (adapter_bytes(config, rank, targets) + optimizer_state_bytes(config, rank, targets, profile.optim)
            + CHECKPOINT_SMALL_FILES_BYTES)


def checkpoint_folder_bytes(config: ConfigLike, profile: Profile) -> int:
    """The checkpoints folder at its peak: save_total_limit checkpoints plus the one written before the oldest goes."""
    return checkpoint_bytes(config, profile) * (profile.save_total_limit + 1)


def lora_training_bytes(config: ConfigLike, profile: Profile) -> int:
    """Memory for training the LoRA: fp32 weights + fp32 gradients + optimizer state (activations not included)."""
    rank, targets = profile.lora_rank, profile.lora_target_modules
    return 2 * adapter_bytes(config, rank, targets) + optimizer_state_bytes(config, rank, targets, profile.optim)


def weights_4bit_bytes(config: ConfigLike) -> int:
    """In-memory weights loaded in 4-bit: nf4 linear layers, 16-bit embeddings, lm_head and norms."""
    counts = parameter_counts(config)
    return int(counts["linear_layers"] * NF4_BYTES) + 2 * (counts["embed_tokens"] + counts["lm_head"] + counts["norms"])


def merged_16bit_bytes(config: ConfigLike) -> int:
    """A merged 16-bit export: 2 bytes per parameter (tokenizer and config files not included)."""
    return 2 * total_parameters(config)


def merge_peak_bytes(config: ConfigLike) -> int:
    """Disk a merged 16-bit export needs while writing: the model plus one shard rewritten through a temp file."""
    merged = merged_16bit_bytes(config)
    return merged + min(merged, SHARD_BYTES)


def gguf_bits_per_weight(method: str) -> float:
    """Bits per weight of a GGUF type (f16 exact; quantised types estimated from llama.cpp's table)."""
    key = method.strip().lower()
    if key not in GGUF_BITS_PER_WEIGHT:
        raise ValueError(f"unknown GGUF type {method!r}; sizes knows {sorted(GGUF_BITS_PER_WEIGHT)}")
    return GGUF_BITS_PER_WEIGHT[key]


def gguf_bytes(config: ConfigLike, method: str) -> int:
    """A GGUF file of this model in `method` (an estimate for quantised types)."""
    return math.ceil(total_parameters(config) * gguf_bits_per_weight(method) / 8)


def gguf_intermediate_bytes(config: ConfigLike, method: str) -> int:
    """What save_pretrained_gguf writes before the final file: the 16-bit merge, plus an f16 GGUF unless direct."""
    direct = method.strip().lower() in GGUF_DIRECT_TYPES
    return merged_16bit_bytes(config) + (0 if direct else gguf_bytes(config, "f16"))


def gguf_peak_bytes(config: ConfigLike, method: str) -> int:
    """Disk a GGUF export needs at its peak: merge (and its shard scratch), f16 GGUF and the quantised file together."""
    return max(merge_peak_bytes(config), gguf_intermediate_bytes(config, method) + gguf_bytes(config, method))


def gguf_kept_bytes(config: ConfigLike, method: str) -> int:
    """What a GGUF export leaves on disk: the GGUF file and the 16-bit merge (Unsloth keeps it; the f16 GGUF goes)."""
    return merged_16bit_bytes(config) + gguf_bytes(config, method)


def disk_bytes(path: Path | str) -> int:
    """Measured size on disk of a file, or of every file under a folder."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def format_bytes(n: float) -> str:
    """Decimal units: '336 MB', '16.1 GB', '4.5 KB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def model_label(config: ConfigLike) -> str:
    """A short name for the model the config describes."""
    name = str(_get(config, "_name_or_path", "") or _get(config, "name_or_path", "") or "")
    return name.rstrip("/").split("/")[-1] or "this model"


def config_for(profile: Profile) -> ConfigLike:
    """The architecture of the profile's model: the 8B config for its Hub ids, else the local model's config.json."""
    known = KNOWN_CONFIGS.get(profile.model_name.lower())
    if known is not None:
        return known
    if profile.model_name == TINY_MODEL_NAME:
        from . import modeling  # here, not at the top: modeling may import sizes

        return json.loads((Path(modeling.model_path(profile)) / "config.json").read_text())
    path = Path(profile.model_name).expanduser() / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    raise ValueError(f"No known shape for {profile.model_name!r}: pass the loaded model's `model.config`.")


@dataclass(frozen=True)
class ArtifactSizes:
    """What one profile's run writes and holds, in bytes, computed from the model's shapes."""

    model: str
    parameters: int
    lora_parameters: int
    lora_rank: int
    lora_targets: tuple[str, ...]
    num_layers: int
    optim: str
    save_total_limit: int
    adapter: int
    checkpoint: int
    checkpoints_peak: int
    weights_4bit: int
    lora_training: int
    merged_16bit: int
    merged_16bit_peak: int
    gguf: dict[str, int] = field(default_factory=dict)
    gguf_method: str = "q4_k_m"
    gguf_intermediate: int = 0
    gguf_peak: int = 0
    gguf_kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Every field, for JSON."""
        return asdict(self)

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, size, how it is computed) rows for a notebook table."""
        q = self.gguf_method
        bpw = gguf_bits_per_weight(q)
        return [
            ("model parameters", f"{self.parameters:,}",
             f"{self.model}: embeddings, {self.num_layers} layers, lm_head"),
            ("LoRA parameters", f"{self.lora_parameters:,}",
             f"rank {self.lora_rank} x (in + out), {len(self.lora_targets)} projections x {self.num_layers} layers"),
            ("LoRA adapter file", format_bytes(self.adapter), "fp32, as Unsloth/PEFT train and save it"),
            ("one checkpoint", format_bytes(self.checkpoint),
             f"adapter + {self.optim} state + tokenizer and trainer files "
             f"(~{format_bytes(CHECKPOINT_SMALL_FILES_BYTES)})"),
            ("checkpoints folder, peak", format_bytes(self.checkpoints_peak),
             f"save_total_limit {self.save_total_limit} + the one being written"),
            ("4-bit weights in memory", format_bytes(self.weights_4bit),
             "nf4 linear layers + 16-bit embeddings and lm_head"),
            ("LoRA training state in memory", format_bytes(self.lora_training),
             f"fp32 weights + fp32 gradients + {self.optim} state"),
            ("merged 16-bit export", format_bytes(self.merged_16bit),
             f"2 bytes per parameter; needs {format_bytes(self.merged_16bit_peak)} free while writing"),
            *[(f"GGUF {m}", format_bytes(n), "2 bytes per parameter" if m in ("f16", "bf16") else
               f"estimate: {gguf_bits_per_weight(m):.2f} bits/weight (llama.cpp's quantize table)")
              for m, n in self.gguf.items()],
            (f"GGUF {q} export, peak", format_bytes(self.gguf_peak),
             f"16-bit merge + f16 GGUF + {q} ({bpw:.2f} bits/weight) together; {format_bytes(self.gguf_kept)} kept"),
        ]


def artifact_sizes(config: ConfigLike, profile: Profile, gguf_method: str = "q4_k_m") -> ArtifactSizes:
    """Every size for this model and profile: LoRA, adapter, checkpoints, memory, merged and GGUF exports."""
    rank, targets = profile.lora_rank, tuple(profile.lora_target_modules)
    methods = dict.fromkeys((gguf_method, *GGUF_METHODS))
    return ArtifactSizes(
        model=model_label(config), parameters=total_parameters(config),
        lora_parameters=lora_parameters(config, rank, targets), lora_rank=rank, lora_targets=targets,
        num_layers=int(_get(config, "num_hidden_layers")), optim=profile.optim,
        save_total_limit=profile.save_total_limit, adapter=adapter_bytes(config, rank, targets),
        checkpoint=checkpoint_bytes(config, profile), checkpoints_peak=checkpoint_folder_bytes(config, profile),
        weights_4bit=weights_4bit_bytes(config), lora_training=lora_training_bytes(config, profile),
        merged_16bit=merged_16bit_bytes(config), merged_16bit_peak=merge_peak_bytes(config),
        gguf={m: gguf_bytes(config, m) for m in methods}, gguf_method=gguf_method,
        gguf_intermediate=gguf_intermediate_bytes(config, gguf_method),
        gguf_peak=gguf_peak_bytes(config, gguf_method), gguf_kept=gguf_kept_bytes(config, gguf_method),
    )


def size_rows(profile: Profile, config: ConfigLike | None = None) -> list[tuple[str, str, str]]:
    """The size table a notebook shows: for the loaded model's config, else the profile's model."""
    return artifact_sizes(config if config is not None else config_for(profile), profile).rows()
