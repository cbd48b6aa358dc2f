import pytest

from grpo_helpers import runtime
from grpo_helpers.runtime import RuntimeInfo


def info(**changes):
    base = dict(is_colab=True, python="3.12", torch_version="2.9.0", cuda_available=True, gpu_name="Tesla T4",
                vram_gb=14.7, compute_capability=(7, 5), bf16_supported=False, cpu_count=2)
    base.update(changes)
    return RuntimeInfo(**base)


def test_t4_verdict_says_fp16_and_the_pinned_vllm():
    text = runtime.runtime_verdict(info())
    assert "Tesla T4" in text and "no bf16" in text and "pinned vLLM" in text
    assert info().is_t4_class


def test_ampere_verdict_has_bf16():
    text = runtime.runtime_verdict(info(gpu_name="NVIDIA A100", vram_gb=40.0, compute_capability=(8, 0), bf16_supported=True))
    assert "bf16" in text and "no bf16" not in text


def test_cpu_verdict_points_at_the_t4_runtime():
    text = runtime.runtime_verdict(info(cuda_available=False, gpu_name=None, vram_gb=None, compute_capability=None))
    assert "Change runtime type" in text and "tiny" in text


def test_small_gpu_is_called_out():
    assert "too small" in runtime.runtime_verdict(info(gpu_name="Tesla K80", vram_gb=11.0))


def test_require_cuda_raises_a_friendly_error(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    with pytest.raises(runtime.GPURequiredError, match="T4 GPU"):
        runtime.require_cuda("training")


def test_describe_runtime_on_this_machine():
    here = runtime.describe_runtime()
    assert here.cpu_count >= 1 and here.torch_version
    assert here.cuda_available == (here.gpu_name is not None)


def test_every_vllm_version_written_in_prose_is_the_pinned_one():
    import re
    from pathlib import Path

    from grpo_helpers.install import VLLM_FOR_T4

    root = Path(__file__).resolve().parents[1]
    texts = {p.name: p.read_text() for p in [root / "README.md", *sorted((root / "notebooks").glob("*.ipynb"))]}
    written = {(name, v) for name, text in texts.items() for v in re.findall(r"vLLM (\d+\.\d+\.\d+)", text)}
    written |= {(name, v) for name, text in texts.items() for v in re.findall(r"last vLLM[^.]{0,80}? is (\d+\.\d+\.\d+)", text)}
    assert written and all(v == VLLM_FOR_T4 for _, v in written), sorted(written)
