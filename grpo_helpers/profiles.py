"""Every knob in one place: a frozen dataclass per profile (`t4` on Colab, `tiny` on CPU)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from . import runtime
from .install import VLLM_FOR_T4

PROFILE_ENV = "GRPO_PROFILE"


class ProfileError(ValueError):
    """An unknown profile name, or a profile this machine cannot run."""


@dataclass(frozen=True)
class Profile:
    """All settings of one run: model, LoRA, data, the GRPO objective, training and evaluation.

    Each field says what it does and, where it feeds TRL's `GRPOConfig` (or Unsloth/PEFT), which field."""

    name: str  # the key in PROFILES and the folder under <artifacts>
    description: str  # one line, printed when the profile is chosen
    # Model ------------------------------------------------------------------------------------
    model_name: str  # a Hub id, or TINY_MODEL_NAME for the offline tiny Llama
    requires_gpu: bool  # get_profile refuses a GPU profile on a machine without CUDA
    load_in_4bit: bool  # bitsandbytes nf4 weights (Unsloth's `load_in_4bit`, a BitsAndBytesConfig otherwise)
    fast_inference: bool  # vLLM generation (Unsloth's `fast_inference`; GRPOConfig.use_vllm); GPU only
    dtype: str  # compute dtype: "float16" on a T4 (no bf16), "bfloat16" on A100/H100, "float32" on CPU
    max_seq_length: int  # prompt + completion tokens the model is set up for (Unsloth's `max_seq_length`)
    gpu_memory_utilization: float  # share of VRAM vLLM may take; the rest is for training
    vllm_standby: bool  # UNSLOTH_VLLM_STANDBY: vLLM and training share the weights; KV cache freed while training
    # LoRA (PEFT's LoraConfig) -----------------------------------------------------------------
    lora_rank: int  # LoraConfig.r: the adapter's rank
    lora_alpha: int  # LoraConfig.lora_alpha: the update is scaled by alpha / rank
    lora_target_modules: tuple[str, ...]  # LoraConfig.target_modules: the projections that get an adapter
    use_gradient_checkpointing: bool | str  # "unsloth" (offloaded), True (recompute) or False; Unsloth applies it
    # Data -------------------------------------------------------------------------------------
    data_source: str | None  # None: $GSM8K_DIR, else the Hub, else synthetic; or "synthetic"
    train_limit: int | None  # None = every training question
    test_limit: int | None  # None = every test question (1,319 in GSM8K)
    # The GRPO objective (notebook 03 derives each term) ---------------------------------------
    num_generations: int  # GRPOConfig.num_generations: answers sampled per question (the group, G)
    loss_type: str  # GRPOConfig.loss_type: how token losses are averaged; "grpo" per answer then per
    #   batch (short answers weigh more per token), "dapo" over all tokens of the generation batch,
    #   "dr_grpo" by a constant (max_completion_length x answers), "bnpo" over the local batch's tokens
    epsilon: float  # GRPOConfig.epsilon: the clip range, ratio kept within [1 - eps, 1 + eps_high]
    epsilon_high: float  # GRPOConfig.epsilon_high: the clip's upper bound (DAPO's clip-higher: 0.28); = epsilon: PPO's
    mask_truncated_completions: bool  # GRPOConfig.mask_truncated_completions: answers cut off at
    #   max_completion_length leave the loss (DAPO's overlong filtering)
    num_iterations: int  # GRPOConfig.num_iterations (mu): updates per generated batch; 1 = on-policy,
    #   the ratio is exactly 1 and the clip never fires; > 1 reuses the batch and the clip starts to matter
    scale_rewards: str  # GRPOConfig.scale_rewards: advantages divided by the std of the "group", the
    #   "batch", or "none" (Dr. GRPO: no division, so near-unanimous groups are not blown up)
    beta: float  # GRPOConfig.beta: weight of the k3 KL estimate towards the base model (adapter off); 0 = no
    #   reference forward pass
    temperature: float  # GRPOConfig.temperature: sampling temperature of the group (and of the log-probs)
    # Training (the Trainer's arguments, through GRPOConfig) -----------------------------------
    per_device_train_batch_size: int  # completions per optimisation step and device (a multiple of the group)
    gradient_accumulation_steps: int  # steps summed before each optimizer update
    max_prompt_length: int  # GRPOConfig.max_prompt_length: longer prompts are truncated from the left
    max_completion_length: int  # GRPOConfig.max_completion_length: tokens each answer may use
    learning_rate: float  # AdamW's learning rate for the LoRA weights
    adam_beta1: float  # AdamW's beta1 (momentum)
    adam_beta2: float  # AdamW's beta2 (second moment)
    lr_scheduler_type: str  # the Trainer's schedule ("cosine", "constant_with_warmup", ...)
    warmup_ratio: float  # share of max_steps spent warming the learning rate up
    weight_decay: float  # AdamW's decoupled weight decay
    max_grad_norm: float  # gradients are clipped to this global norm
    optim: str  # the Trainer's optimizer name ("paged_adamw_8bit" on a GPU, "adamw_torch" on CPU)
    max_steps: int  # optimisation steps (one step = per_device_train_batch_size completions)
    logging_steps: int  # metrics.csv gets a row every this many steps
    save_steps: int  # a checkpoint every this many steps (what a disconnect can cost)
    save_total_limit: int  # checkpoints kept; older ones are deleted by the Trainer
    warm_start_steps: int  # supervised steps on synthetic solutions before GRPO (0 = none)
    # Evaluation -------------------------------------------------------------------------------
    eval_questions: int  # GSM8K test questions for notebook 05's before/after
    eval_max_new_tokens: int  # greedy answer length in evaluation
    eval_batch_size: int  # questions per generate call in evaluation
    eval_full_test_set: bool  # notebook 05 scores every test question load_gsm8k returns (1,319 in GSM8K)
    eval_samples: int  # notebook 05's sampling mode: k answers per question at `temperature`, pass@k and maj@k; 1 = off
    watch_questions: int  # held-out test questions scored greedily while training (grpo_helpers.watch); 0 = no watch
    watch_every_steps: int  # the watch scores them at step 0, every this many steps and at the last step
    pi_samples: int  # sampled answers per pi prompt and model
    pi_max_new_tokens: int  # answer length for the pi prompts
    pi_timeout_s: float  # wall-clock limit for each generated program in the sandbox
    preflight_steps: int  # notebook 04 measures this many real GRPO steps before the long run (0: off)
    session_budget_hours: float  # the longest a free Colab session runs (Colab's FAQ; often less)
    seed: int  # Trainer, sampling and data-shuffling seed
    # Engine (grpo_helpers.backends) -----------------------------------------------------------
    backend: str  # "unsloth" (one GPU, Unsloth's kernels and vLLM) or "trl" (TRL + PEFT under accelerate launch)
    vllm_mode: str  # backend "trl": GRPOConfig.vllm_mode, "colocate" (vLLM in each process) or "server" (trl vllm-serve)
    vllm_server_host: str  # GRPOConfig.vllm_server_host: where the trainer finds the server (and where it listens)
    vllm_server_port: int  # GRPOConfig.vllm_server_port: the server's HTTP port (`trl vllm-serve --port`)
    vllm_server_timeout_s: float  # GRPOConfig.vllm_server_timeout: seconds to wait for the server to answer

    def replace(self, **changes: object) -> "Profile":
        """A copy with some fields changed; an unknown field is a ProfileError listing the valid names."""
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ProfileError(f"Profile has no field {', '.join(map(repr, unknown))}. Valid names: {', '.join(valid)}.")
        return dataclasses.replace(self, **changes)

    def as_table(self) -> list[tuple[str, object]]:
        """(field, value) rows, for showing the profile in a notebook."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


TINY_MODEL_NAME = "grpo-tiny-llama"
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

T4 = Profile(
    name="t4",
    description=f"Llama-3.1-8B-Instruct in 4-bit on a free Colab T4 (15 GB, fp16, vLLM {VLLM_FOR_T4})",
    # Ungated copy of meta-llama/Llama-3.1-8B-Instruct; with load_in_4bit Unsloth fetches its
    # pre-quantised bnb-4bit twin (5.7 GB instead of 16 GB of downloads).
    model_name="unsloth/Meta-Llama-3.1-8B-Instruct",
    requires_gpu=True,
    load_in_4bit=True,  # 8B weights in 4-bit take ~5.7 GB of the T4's 15 GB (sizes.weights_4bit_bytes)
    fast_inference=True,  # vLLM samples the group 5-10x faster than HF generate
    dtype="float16",  # a T4 (compute capability 7.5) has no bfloat16
    max_seq_length=1024,  # 256 prompt + 768 completion; longer does not fit next to vLLM
    # The T4 memory budget (15.0 GB card, ~14.7 GB usable), the plan of Unsloth's Llama-3.1-8B GRPO
    # notebook (Aug 2026): standby on, gpu_memory_utilization 0.9. Sources: sizes from
    # grpo_helpers.sizes (the model's shapes); the standby behaviour from Unsloth's "memory-efficient
    # RL" docs; activations are an estimate, not a measurement.
    #   4-bit weights, shared by vLLM and training (standby) ......... ~5.7 GB (7B in nf4 + 16-bit embeddings/head)
    #   vLLM KV cache, 0.9 x 14.7 - weights ........................... ~7.5 GB, released during the training step
    #   LoRA r=32: 84M params, fp32 weights + grads + 8-bit Adam ...... ~0.8 GB
    #   activations, 6 x 1024 tokens, offloaded checkpointing ......... ~2-3 GB (estimate; the logits are chunked)
    # Without standby the KV cache and the training step would need the card at the same time, which
    # is why the old plan capped vLLM at 0.6.
    gpu_memory_utilization=0.9,
    vllm_standby=True,
    lora_rank=32,  # Unsloth's choice for this model: enough capacity, small optimizer state
    lora_alpha=32,  # alpha = rank keeps the LoRA scale at 1
    lora_target_modules=LLAMA_PROJECTIONS,
    use_gradient_checkpointing="unsloth",  # offloaded checkpointing: the long completions fit
    data_source=None,
    train_limit=None,
    test_limit=None,
    num_generations=6,  # group size: 6 answers per question give a usable advantage baseline
    # The objective: TRL 0.22.2's defaults, written out so the notebooks can teach what runs.
    loss_type="dapo",  # every token of the batch weighs the same: long wrong answers are not let off lightly
    epsilon=0.2,  # PPO's and DeepSeekMath's clip; inactive here (num_iterations=1), kept for num_iterations > 1
    # TRL's defaults, written out because Unsloth's GRPOConfig switches to 0.28 and True when loss_type="dapo" is
    # named: notebook 03 checks TRL's objective, so this is the one that runs.
    epsilon_high=0.2,
    mask_truncated_completions=False,  # a cut-off answer still counts: its missing <answer> tag is penalised
    num_iterations=1,  # one update per generated batch: a second would double the ~15 s update for less new data
    scale_rewards="group",  # DeepSeekMath's advantage: (reward - group mean) / group std
    per_device_train_batch_size=6,  # one question (its 6 answers) per step
    gradient_accumulation_steps=1,  # more would multiply the ~55 s step time
    max_prompt_length=256,  # GSM8K questions + system prompt: 99% under 256 tokens
    max_completion_length=768,  # room for multi-line reasoning; max_seq_length - prompt
    learning_rate=5e-6,  # GRPO moves the policy gently; 1e-5 and up destabilises 8B LoRA
    adam_beta1=0.9,
    adam_beta2=0.99,  # DeepSeekMath's GRPO betas (the Trainer's default 0.999 adapts more slowly to spiky RL gradients)
    lr_scheduler_type="cosine",
    warmup_ratio=0.1,
    weight_decay=0.1,
    max_grad_norm=0.1,  # RL gradients are spiky; clip hard
    optim="paged_adamw_8bit",  # 8-bit optimizer states, paged to CPU on memory spikes
    # No KL term (TRL 0.22.2's and Unsloth's default). beta > 0 costs a reference forward pass over
    # 6 x 1024 tokens every step (the base with the adapter off: ~+25% step time, an estimate), and
    # 250 steps of a rank-32 LoRA at lr 5e-6 with grad clipping 0.1 stay close to the instruct model.
    beta=0.0,
    temperature=0.9,  # diverse samples inside a group, or every advantage is zero
    max_steps=250,  # Unsloth's notebook: 250 steps in 13,743 s (~55 s/step, 3.8 h); the pre-flight measures ours
    logging_steps=1,
    save_steps=25,  # a disconnect costs at most ~23 minutes of training (25 x ~55 s)
    save_total_limit=3,
    warm_start_steps=0,  # the instruct model already follows the format well enough
    eval_questions=200,  # GSM8K test questions for before/after (about 10 min each side with vLLM)
    eval_max_new_tokens=768,
    eval_batch_size=64,
    eval_full_test_set=False,  # 1,319 questions x 2 models: ~2 h on the T4 (an estimate from the 10 min per 200 above)
    eval_samples=1,  # greedy only: 8 samples each take up to ~8x as long (an estimate); set 8 for pass@8 and maj@8
    # The watch: 32 held-out questions (the end of the test split, not the ones notebook 05 scores first),
    # greedy, through vLLM with the current LoRA, at step 0, every 25 steps and at step 250: 11 watches.
    # Cost, an estimate (not measured on a T4): ~1-2 min each at the ~3 s per question of eval_questions'
    # figure, so ~10-20 min on a ~3.8 h run (5-9%). 32 questions show a collapse (80% -> 40%; the 95%
    # interval at 80% is 65-91%), not a drift of a few points: that is notebook 05's job.
    watch_questions=32,
    watch_every_steps=25,
    pi_samples=8,  # per prompt and model: enough to tell "sometimes" from "usually"
    pi_max_new_tokens=768,  # a BBP program with explanation fits in ~400 tokens
    pi_timeout_s=10.0,
    preflight_steps=2,  # two real steps: the first includes vLLM's warm-up, the second is the steady pace
    session_budget_hours=12.0,  # Colab's FAQ: "up to 12 hours", often less on the free tier
    seed=3407,  # Unsloth's notebooks' seed
    # One T4: Unsloth's 4-bit kernels and its in-process vLLM with the standby memory plan above (TRL's
    # own trainer cannot share the 4-bit weights with vLLM). Several processes (accelerate launch) always
    # train with "trl" (backends.backend_for): Unsloth trains in one process only.
    backend="unsloth",
    vllm_mode="colocate",  # Unsloth's engine lives in the training process; "server" is the trl backend's
    vllm_server_host="127.0.0.1",  # a server on this machine, listening only locally
    vllm_server_port=8000,  # TRL's default (`trl vllm-serve --port` and GRPOConfig.vllm_server_port)
    vllm_server_timeout_s=240.0,  # TRL's default: loading a model into a fresh server takes minutes
)

# Kaggle's two T4s (15 GB each, fp16): TRL's vLLM server on GPU 0, the trainer on GPU 1 (README: "Past one
# T4"). vLLM cannot take TRL's weight updates for a 4-bit model (huggingface/trl#4973), so both sides hold
# 16-bit weights, and an 8B model in fp16 (16 GB) fits neither card: Llama-3.2-3B-Instruct (6.4 GB in fp16).
# Memory, estimates from grpo_helpers.sizes and the shapes, not measured on Kaggle:
#   GPU 0, server: 6.4 GB weights, KV cache in the rest of 0.9 x 15 GB (~6 GB, ~50k tokens of 1024-token answers)
#   GPU 1, trainer: 6.4 GB weights + LoRA r=32 (49M params, ~0.5 GB with 8-bit Adam) + activations of 6 x 1024
#   tokens with checkpointing (~3-5 GB): ~10-12 GB of 15
# Time, an estimate: ~25-35 s a step (generation ~15 s, update ~10 s, weight sync to the server ~3 s), so
# 250 steps in ~2-2.5 h, inside Kaggle's 12 h session (session_budget_hours as on Colab) and 30 GPU-hours a week.
KAGGLE_2XT4 = T4.replace(
    name="kaggle_2xt4",
    description="Llama-3.2-3B-Instruct on Kaggle's two T4s: TRL's vLLM server on one, the trainer on the other",
    model_name="unsloth/Llama-3.2-3B-Instruct",  # an ungated copy of meta-llama/Llama-3.2-3B-Instruct
    load_in_4bit=False,  # fp16 weights: what the server's vLLM engine can take updates for
    vllm_standby=False,  # Unsloth's; the server keeps its own GPU
    use_gradient_checkpointing=True,  # HF's recompute ("unsloth", offloaded, is Unsloth's own)
    backend="trl",  # two GPUs, one per process role: TRL's trainer, not Unsloth's
    vllm_mode="server",  # a 3B model in fp16 twice (training + vLLM) plus activations does not fit one T4
)

# A node of N x A100/H100 80 GB (bf16): accelerate launch with one training process per GPU (DDP), each with
# its own colocated vLLM engine (TRL's "colocate"): no GPU waits for a server. Llama-3.1-8B-Instruct in bf16.
# Memory per GPU, estimates from the shapes, not measured: vLLM 0.3 x 80 GB = 24 GB (16 GB weights + ~7 GB
# KV cache); training 16 GB weights + LoRA r=32 (84M params, ~1.3 GB with fp32 AdamW) + activations of 12 x 1024
# tokens with checkpointing (~6-10 GB): ~50 GB of 80. A 40 GB card does not fit this plan (lower
# per_device_train_batch_size and gpu_memory_utilization, or use configs/accelerate/zero3.yaml).
# Time, an estimate: ~10-20 s a step on 8 x H100 (each GPU: 12 answers of up to 768 tokens, then the update),
# 250 steps in ~1 h; 8 GPUs x 12 completions = 16 questions a step.
MULTI_GPU = T4.replace(
    name="multi_gpu",
    description="Llama-3.1-8B-Instruct in bf16 on N x A100/H100 80 GB: accelerate launch, DDP, colocated vLLM",
    load_in_4bit=False,  # bf16 weights fit and vLLM can take their updates (not a 4-bit model's)
    dtype="bfloat16",  # A100/H100 have bf16: fp32's range, no loss scaling
    gpu_memory_utilization=0.3,  # GRPOConfig.vllm_gpu_memory_utilization: vLLM's share, the rest trains
    vllm_standby=False,  # Unsloth's; TRL's colocated engine keeps its share
    use_gradient_checkpointing=True,  # HF's recompute ("unsloth", offloaded, is Unsloth's own)
    per_device_train_batch_size=12,  # two questions (of 6 answers) per GPU and step
    optim="adamw_torch",  # LoRA's AdamW states are ~0.7 GB in fp32: no need for 8-bit paging
    session_budget_hours=24.0,  # a rented node has no session limit: the pre-flight projects against a day
    backend="trl",  # several processes: TRL's trainer under accelerate launch
)

# The CPU rehearsal: the T4 run with only what a 1M-parameter model on 2 CPU cores needs changed.
TINY = T4.replace(
    name="tiny",
    description="a tiny Llama built locally, on CPU, in minutes (CI, laptops, no network)",
    model_name=TINY_MODEL_NAME,
    requires_gpu=False,
    load_in_4bit=False,  # bitsandbytes 4-bit on CPU: 2.1x slower generation here; tests cover that path
    fast_inference=False,  # vLLM needs a GPU: generation falls back to HF generate
    dtype="float32",  # CPUs have no fast fp16 matmuls
    max_seq_length=256,  # the synthetic prompts and solutions are short
    gpu_memory_utilization=0.0,  # no vLLM
    vllm_standby=False,  # no vLLM
    lora_rank=16,  # a 1M-parameter model: rank 16 is already a large share of it
    use_gradient_checkpointing=False,  # nothing to save on a model this small
    data_source="synthetic",  # problems from our templates, which a 1M-parameter model can learn
    train_limit=512,  # more than 80 steps x 2 questions can use
    test_limit=64,
    num_generations=4,  # a smaller group: two questions per step fit in the batch of 8
    per_device_train_batch_size=8,  # two questions of 4 answers per step: fewer all-equal groups
    max_prompt_length=160,
    max_completion_length=48,  # the synthetic solutions are ~40 tokens
    learning_rate=5e-4,  # a tiny LoRA from a half-trained model: 2e-3 collapsed the policy, 5e-4 climbs steadily
    lr_scheduler_type="constant_with_warmup",  # 80 steps: no room for a cosine tail
    warmup_ratio=0.0,
    weight_decay=0.0,
    max_grad_norm=1.0,  # tiny-model gradients are not spiky enough to need 0.1
    optim="adamw_torch",  # bitsandbytes' paged 8-bit Adam needs a GPU
    temperature=0.6,  # Llama 3.1's default; sharper groups help a tiny model find in-format answers
    max_steps=80,  # ~70 s on 2 CPU cores: strict-format share 50% -> 80%+ on held-out prompts
    save_steps=20,
    save_total_limit=2,
    warm_start_steps=80,  # leaves the format half-learnt, so GRPO has something to find
    eval_questions=64,
    eval_max_new_tokens=48,
    eval_full_test_set=True,  # the whole test split (test_limit: 64), ~1.5 s per model (measured): CI runs that path
    eval_samples=4,  # ~9 s per model for 64 x 4 samples on one core (measured): CI runs pass@4 and maj@4
    watch_every_steps=20,  # 80 steps: watches at 0, 20, 40, 60 and 80, ~1 s each (measured, 32 questions)
    pi_samples=2,
    pi_max_new_tokens=48,
    pi_timeout_s=5.0,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (T4, TINY, KAGGLE_2XT4, MULTI_GPU)}


def get_profile(name: str | None = None, *, check_hardware: bool = True, quiet: bool = False) -> Profile:
    """The profile named (or in $GRPO_PROFILE, or the one the hardware allows), saying which and why."""
    if name:
        reason = "asked for by name"
    elif os.environ.get(PROFILE_ENV, "").strip():
        name, reason = os.environ[PROFILE_ENV].strip(), f"from ${PROFILE_ENV}"
    elif runtime.cuda_available():
        name, reason = "t4", "a CUDA GPU is present"
    else:
        name, reason = "tiny", "no CUDA GPU here, so the tiny CPU model"
    key = name.strip().lower()
    if key not in PROFILES:
        valid = ", ".join(sorted(PROFILES))
        raise ProfileError(f"Unknown profile {name!r} ({reason}). Valid profiles: {valid}. "
                           f"Set {PROFILE_ENV} to one of them, or unset it to choose by hardware.")
    profile = PROFILES[key]
    if check_hardware and profile.requires_gpu:
        runtime.require_cuda(f"the {profile.name!r} profile")
    if not quiet:
        print(f"Profile {profile.name!r} ({reason}): {profile.description}")
    return profile
