import hashlib
import json

from grpo_helpers import data, tiny


def _digest(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    again = tiny.ensure_tiny_model(tmp_path / "again")
    assert _digest(again) == _digest(tiny_model_dir)
    assert (again / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()


def test_cache_is_reused(tiny_model_dir, capsys):
    before = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    tiny.ensure_tiny_model(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert "Built" not in capsys.readouterr().out
    marker = json.loads((tiny_model_dir / tiny.BUILD_MARKER).read_text())
    assert marker["fingerprint"] == tiny.TinySpec().fingerprint()


def test_tokenizer_behaves_like_llama31(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.eos_token == "<|eot_id|>" and tok.pad_token == "<|finetune_right_pad_id|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert "token_type_ids" not in tok("hello")
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    text = tok.apply_chat_template(data.format_prompt("What is 2+2?"), tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        f"{data.SYSTEM_PROMPT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    reply = "<reasoning>\n2 + 2 = 4\n</reasoning>\n<answer>\n4\n</answer>"
    assert tok.decode(tok(reply, add_special_tokens=False)["input_ids"]) == reply  # byte-level: lossless


def test_model_is_a_small_llama(tiny_model_dir):
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "llama" and config.num_hidden_layers == tiny.TinySpec().num_hidden_layers
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    assert config.eos_token_id in generation.eos_token_id
