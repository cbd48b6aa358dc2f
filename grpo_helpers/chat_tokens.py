"""What ends an assistant turn and what pads, read from the tokenizer's own chat template.

TRL's GRPOTrainer stops each completion at `tokenizer.eos_token_id` and masks everything after
it; Unsloth's GRPO loss treats every `pad_token_id` in a prompt as left padding. So the tokenizer
must name the token the chat template closes an assistant turn with as its eos (`<|eot_id|>` for
Llama 3.1, `<|im_end|>` for ChatML), and its pad must be a real token that no chat prompt holds.
Converted checkpoints often get this wrong (a GGUF's tokenizer can report `<|im_start|>` as eos,
many tokenizers pad with eos), so generation and training check it here, for any template.
"""

from __future__ import annotations

from typing import Any, Iterable

_PROBE = "GRPO-END-OF-TURN-PROBE"  # plain text that no chat template rewrites
_PAD_HINTS = ("pad",)  # a special token whose name says it pads (<|finetune_right_pad_id|>, <pad>, [PAD])


def _special_tokens(tokenizer: Any) -> list[str]:
    added = [getattr(t, "content", str(t)) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
    return list(dict.fromkeys([*added, *getattr(tokenizer, "all_special_tokens", [])]))


def _ids(values: Any) -> list[int]:
    if values is None:
        return []
    values = values if isinstance(values, (list, tuple, set)) else [values]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the chat template closes an assistant turn with; None if it has none."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # no chat template, or one that refuses this conversation
        return None
    at = text.rfind(_PROBE) if isinstance(text, str) else -1
    if at < 0:
        return None
    after = text[at + len(_PROBE):].lstrip()
    matches = [token for token in _special_tokens(tokenizer) if token and after.startswith(token)]
    return max(matches, key=len) if matches else None


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Every id a reply may end on: the template's end of turn, the tokenizer's eos, the model's eos ids."""
    ids = _ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    ids += _ids(getattr(tokenizer, "eos_token_id", None))
    end = end_of_turn_token(tokenizer)
    if end is not None:
        ids.append(tokenizer.convert_tokens_to_ids(end))
    return sorted(set(ids))


def _prompt_token_ids(tokenizer: Any) -> set[int]:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}, {"role": "user", "content": "U"}]
    try:
        return set(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    except Exception:
        return set()


def safe_pad_token(tokenizer: Any, stop_ids: Iterable[int] = ()) -> str | None:
    """A real token to pad with that is no stop token and appears in no chat prompt (the current pad if it is)."""
    unsafe = set(stop_ids) | set(_ids(getattr(tokenizer, "eos_token_id", None))) | _prompt_token_ids(tokenizer)
    special = _special_tokens(tokenizer)
    candidates = [tokenizer.pad_token, tokenizer.unk_token,
                  *[t for t in special if any(h in t.lower() for h in _PAD_HINTS)]]
    for token in candidates:
        if token is None or token not in special:
            continue
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id not in unsafe:
            return token
    return None


def align_special_tokens(tokenizer: Any, model: Any = None) -> list[str]:
    """Set eos to the template's end of turn, pad to a safe token, drop token_type_ids; returns what changed."""
    # In place, on the tokenizer and the model's generation_config/config; a no-op for tokenizers
    # that already agree with their template (Llama 3.1's, the tiny model's).
    changes: list[str] = []
    end = end_of_turn_token(tokenizer)
    if end is not None and tokenizer.eos_token != end:
        changes.append(f"eos {tokenizer.eos_token!r} -> {end!r} (the chat template's end of turn)")
        tokenizer.eos_token = end
    stops = stop_token_ids(tokenizer)  # the tokenizer's own: a model's extra eos ids may be safe pads
    pad = safe_pad_token(tokenizer, stops)
    if pad is None and tokenizer.pad_token is not None and tokenizer.pad_token_id not in stops:
        pad = tokenizer.pad_token  # nothing safer in the vocabulary; at least it never ends a reply
    if pad is None:
        raise ValueError(f"No usable pad token: {tokenizer.pad_token!r} is missing or a stop token, and the "
                         f"vocabulary has no pad-like special token outside the chat prompts. Set "
                         f"tokenizer.pad_token to a special token that is neither.")
    if tokenizer.pad_token != pad:
        changes.append(f"pad {tokenizer.pad_token!r} -> {pad!r} (padding must not look like a prompt or stop token)")
        tokenizer.pad_token = pad
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        changes.append("token_type_ids dropped (generate() rejects them for a causal LM)")
    if model is not None:
        eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            eos_ids = _ids(generation_config.eos_token_id)
            if eos_id not in eos_ids:
                generation_config.eos_token_id = [eos_id, *eos_ids] if eos_ids else eos_id
            generation_config.pad_token_id = pad_id
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "pad_token_id", pad_id) != pad_id:
            config.pad_token_id = pad_id
    return changes
