"""Shared fixtures: an isolated artifacts dir, the tiny model built once, the real GSM8K files."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, built once per test session."""
    from grpo_helpers import tiny

    return tiny.ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture()
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $GRPO_ARTIFACTS for one test."""
    monkeypatch.setenv("GRPO_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """../shared/data/gsm8k (the real GSM8K), or skip when this checkout has no ../shared beside it."""
    if not (SHARED_GSM8K / "train.jsonl").is_file():
        pytest.skip(f"real GSM8K not found at {SHARED_GSM8K} (CI has ../shared beside the clone)")
    return SHARED_GSM8K
