"""Sizes from a model's shapes, and exports that check the disk first and clean up after a failure."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from grpo_helpers import export, modeling, runtime, sizes
from grpo_helpers.profiles import LLAMA_PROJECTIONS, T4, TINY, get_profile

LLAMA_8B = sizes.LLAMA_31_8B_CONFIG
DiskUsage = namedtuple("DiskUsage", "total used free")


def fake_disk(monkeypatch: pytest.MonkeyPatch, free: float) -> None:
    """Every filesystem reports `free` bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**12, 10**12 - int(free), int(free)))


class Fake8B:
    """A stand-in with Llama-3.1-8B's config that fails the test if anything tries to write it."""

    config = LLAMA_8B

    def modules(self) -> list:
        return []

    def save_pretrained_merged(self, *args, **kwargs):
        raise AssertionError("the export should have been refused before writing")

    save_pretrained_gguf = save_pretrained = save_pretrained_merged


# --- sizes ---------------------------------------------------------------------------------------

def test_llama_31_8b_parameter_and_lora_counts():
    counts = sizes.parameter_counts(LLAMA_8B)
    assert counts["total"] == 8_030_261_248
    assert counts["q_proj"] == 4096 * 4096 and counts["k_proj"] == 4096 * 1024 and counts["down_proj"] == 14336 * 4096
    assert sizes.lora_parameters(LLAMA_8B, 32, LLAMA_PROJECTIONS) == 83_886_080
    assert sizes.lora_parameters(LLAMA_8B, 32, ("q_proj",)) == 32 * 32 * (4096 + 4096)
    with pytest.raises(ValueError, match="lm_head"):
        sizes.lora_parameters(LLAMA_8B, 32, ("lm_head",))


def test_llama_31_8b_file_sizes():
    s = sizes.artifact_sizes(LLAMA_8B, T4)
    assert s.adapter == 83_886_080 * 4 and sizes.format_bytes(s.adapter) == "336 MB"  # fp32
    assert s.merged_16bit == 2 * 8_030_261_248 and sizes.format_bytes(s.merged_16bit) == "16.1 GB"
    assert 0.45e9 < s.checkpoint < 0.55e9  # adapter + 8-bit Adam (~2 bytes/param) + small files
    assert s.checkpoints_peak == s.checkpoint * (T4.save_total_limit + 1)
    # llama.cpp's quantize table: Q4_K_M 4.58 GiB, Q8_0 7.96 GiB for Llama-3-8B, the same shape
    assert s.gguf["q4_k_m"] == pytest.approx(4.58 * 2**30, rel=1e-6)
    assert sizes.format_bytes(s.gguf["q4_k_m"]) == "4.9 GB"
    assert s.gguf["q8_0"] == pytest.approx(7.96 * 2**30, rel=1e-6) and s.gguf["f16"] == s.merged_16bit
    assert s.gguf_peak == s.merged_16bit + s.gguf["f16"] + s.gguf["q4_k_m"]
    assert s.gguf_kept == s.merged_16bit + s.gguf["q4_k_m"]
    assert 5.5e9 < s.weights_4bit < 5.9e9  # Unsloth's bnb-4bit Llama-3.1-8B download is 5.7 GB
    assert sizes.gguf_intermediate_bytes(LLAMA_8B, "q8_0") == s.merged_16bit  # converted directly, no f16 file


def test_optimizer_state_follows_the_optim():
    rank, targets = 32, LLAMA_PROJECTIONS
    n = sizes.lora_parameters(LLAMA_8B, rank, targets)
    assert sizes.optimizer_state_bytes(LLAMA_8B, rank, targets, "adamw_torch") == 8 * n
    for optim in ("paged_adamw_8bit", "adamw_8bit"):
        assert sizes.optimizer_state_bytes(LLAMA_8B, rank, targets, optim) == pytest.approx(2.03125 * n, rel=1e-6)
    tiny_shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "vocab_size": 10}  # tensors under 4096 elements keep 32-bit state
    assert sizes.optimizer_state_bytes(tiny_shape, 4, targets, "paged_adamw_8bit") == \
        sizes.optimizer_state_bytes(tiny_shape, 4, targets, "adamw_torch")


def test_size_rows_and_export_needs_are_computed():
    table = {what: size for what, size, _ in sizes.size_rows(T4)}
    assert table["LoRA parameters"] == "83,886,080" and table["LoRA adapter file"] == "336 MB"
    assert table["merged 16-bit export"] == "16.1 GB" and table["GGUF q4_k_m"] == "4.9 GB"
    assert "336 MB" in export.EXPORT_NEEDS["lora"] and "tens of MB" not in export.EXPORT_NEEDS["lora"]
    assert "16.1 GB" in export.EXPORT_NEEDS["merged_16bit"] and "37.0 GB" in export.EXPORT_NEEDS["gguf"]


# --- the free-space check ------------------------------------------------------------------------

def test_export_to_a_short_disk_is_refused_before_writing(monkeypatch, tmp_path):
    fake_disk(monkeypatch, 15e9)  # a free Google Drive
    target = tmp_path / "export" / "merged_16bit"
    result = export.export_model(Fake8B(), None, "merged_16bit", target, profile=T4)
    assert not result.ok and not (tmp_path / "export").exists()
    assert "nothing written" in result.message and "16.1 GB" not in result.message  # the peak, not the file
    assert "23.2 GB" in result.message and "15.0 GB free" in result.message and "EXPORT_DIR" in result.message
    assert result.needed_gb == pytest.approx(23.18, abs=0.01) and result.free_gb == 15.0
    existing = tmp_path / "empty"
    existing.mkdir()
    fake_disk(monkeypatch, 0.2e9)
    lora = export.export_model(Fake8B(), None, "lora", existing, profile=T4)
    assert not lora.ok and list(existing.iterdir()) == []
    assert "846 MB" in lora.message and "200 MB free" in lora.message  # 336 MB adapter + 10 MB tokenizer + 500 MB


def test_gguf_counts_its_intermediates_and_points_colab_at_local_disk(monkeypatch, tmp_path):
    fake_disk(monkeypatch, 30e9)  # room for the merge and the GGUF, not for the f16 GGUF beside them
    monkeypatch.setattr(runtime, "host_reachable", lambda *args, **kwargs: True)
    monkeypatch.setattr(runtime, "is_colab", lambda: True)
    monkeypatch.setattr(export, "_same_filesystem", lambda a, b: False)  # the target is on Drive
    result = export.export_model(Fake8B(), None, "gguf", tmp_path / "gguf", profile=T4)
    assert not result.ok and not (tmp_path / "gguf").exists()
    assert "37.0 GB" in result.message and "/content/export" in result.message and "f16 GGUF" in result.message


# --- real exports of the tiny model --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny profile's model with fresh LoRA, loaded as the notebooks do (built without warm start: quick)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling, "model_path", lambda profile: str(tiny_model_dir))
        return modeling.load_model(get_profile("tiny", quiet=True))


def test_sizes_match_the_tiny_model(tiny):
    model, _ = tiny
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert sizes.total_parameters(model.config) == base
    assert sizes.lora_parameters(model.config, TINY.lora_rank, TINY.lora_target_modules) == lora
    assert export.lora_shape(model) == (TINY.lora_rank, tuple(sorted(LLAMA_PROJECTIONS)))


def test_lora_and_merged_exports_of_the_tiny_model(tiny, tmp_path):
    model, tokenizer = tiny
    lora = export.export_model(model, tokenizer, "lora", tmp_path / "lora", profile=TINY)
    assert lora.ok, lora.message
    weights = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    assert 0 < weights - sizes.adapter_bytes(model.config, TINY.lora_rank, TINY.lora_target_modules) < 20_000
    assert lora.needed_gb and lora.path == str(tmp_path / "lora")
    merged = export.export_model(model, tokenizer, "merged_16bit", tmp_path / "merged", profile=TINY)
    assert merged.ok, merged.message
    written = sum(p.stat().st_size for p in (tmp_path / "merged").glob("*.safetensors"))
    assert 0 < written - sizes.merged_16bit_bytes(model.config) < 20_000


# --- a failed export removes what it wrote -------------------------------------------------------

def half_write_then(exc: BaseException):
    """A save_adapter that writes part of an adapter, then fails."""
    def save(model, tokenizer, directory):
        (Path(directory) / "adapter_model.safetensors").write_bytes(b"half")
        (Path.cwd() / "model.F16.gguf").write_bytes(b"leftover")  # what llama.cpp leaves in the cwd
        raise exc
    return save


def test_a_failed_export_removes_only_what_it_created(monkeypatch, tmp_path):
    monkeypatch.setattr(export, "save_adapter", half_write_then(OSError(28, "No space left on device")))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "mine.gguf").write_bytes(b"keep")
    monkeypatch.chdir(cwd)
    fresh = export.export_model(Fake8B(), None, "lora", tmp_path / "new" / "lora", profile=T4)
    assert not fresh.ok and "No space left" in fresh.message and "Removed" in fresh.message
    assert not (tmp_path / "new").exists() and sorted(p.name for p in cwd.iterdir()) == ["mine.gguf"]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's")
    assert not export.export_model(Fake8B(), None, "lora", existing, profile=T4).ok
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]


def test_an_interrupted_export_cleans_up_then_stops(monkeypatch, tmp_path):
    monkeypatch.setattr(export, "save_adapter", half_write_then(KeyboardInterrupt()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        export.export_model(Fake8B(), None, "lora", tmp_path / "lora", profile=T4)
    assert not (tmp_path / "lora").exists() and not list(tmp_path.glob("*.gguf"))
