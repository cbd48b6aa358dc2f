import re

import pytest

from grpo_helpers import data
from grpo_helpers.data import GSM8KDirError, extract_hash_answer, load_gsm8k


@pytest.mark.parametrize("solution, expected", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("...\n#### 1,234", "1234"),
    ("#### -5", "-5"),
    ("no marker here", None),
    ("#### ", None),
    (None, None),
])
def test_extract_hash_answer(solution, expected):
    assert extract_hash_answer(solution) == expected


def test_prompt_is_system_then_user():
    messages = data.format_prompt("What is 2+2?")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "<reasoning>" in messages[0]["content"] and "<answer>" in messages[0]["content"]


def test_solution_reasoning_drops_calculator_marks_and_answer():
    assert data.solution_reasoning("a 2*3 = <<2*3=6>>6\n#### 6") == "a 2*3 = 6"


def test_synthetic_is_seeded_and_arithmetically_right():
    rows = data.synthetic_gsm8k(400, seed=7)
    assert rows == data.synthetic_gsm8k(400, seed=7) and rows != data.synthetic_gsm8k(400, seed=8)
    for row in rows:
        for expression, value in re.findall(r"<<([^=]+)=([^>]+)>>", row["answer"]):
            assert eval(expression) == int(value)  # every calculator step is exact
        last_value = re.findall(r"<<[^=]+=([^>]+)>>", row["answer"])[-1]
        assert extract_hash_answer(row["answer"]) == last_value and int(last_value) >= 0
    assert len({row["question"].split()[1] for row in rows}) > 3  # several templates


def test_loads_real_gsm8k_from_dir(monkeypatch, gsm8k_dir, capsys):
    monkeypatch.setenv("GSM8K_DIR", str(gsm8k_dir))
    test = load_gsm8k("test")
    assert len(test) == 1319 and set(test.column_names) >= {"prompt", "answer", "question"}
    assert test[0]["prompt"][1]["content"] == test[0]["question"]
    assert re.fullmatch(r"-?[\d.]+", test[0]["answer"])
    assert "test.jsonl" in capsys.readouterr().out


def test_profile_limits_and_shuffles_train(monkeypatch, gsm8k_dir):
    from grpo_helpers.profiles import PROFILES

    monkeypatch.setenv("GSM8K_DIR", str(gsm8k_dir))
    tiny = PROFILES["tiny"].replace(data_source=None)  # the real files, not tiny's synthetic task
    train = load_gsm8k("train", tiny)
    assert len(train) == tiny.train_limit
    assert train["question"] == load_gsm8k("train", tiny)["question"]  # same seed, same order


def test_gsm8k_dir_pointing_at_nothing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GSM8K_DIR", str(tmp_path / "missing"))
    with pytest.raises(GSM8KDirError, match="does not exist"):
        load_gsm8k("train")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("GSM8K_DIR", str(tmp_path / "empty"))
    with pytest.raises(GSM8KDirError, match="test.jsonl"):
        load_gsm8k("test")


def test_no_hub_and_no_dir_falls_back_to_synthetic_and_says_so(monkeypatch, capsys):
    monkeypatch.delenv("GSM8K_DIR", raising=False)
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    train = load_gsm8k("train")
    assert len(train) == data.SYNTHETIC_SIZES["train"]
    out = capsys.readouterr().out
    assert "No Hub access" in out and "synthetic" in out


def test_forcing_the_hub_offline_raises(monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    with pytest.raises(ConnectionError, match="GSM8K_DIR"):
        load_gsm8k("test", source="hub")


def test_hub_offline_env_means_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert data.hub_reachable() is False


def test_tiny_profile_trains_on_synthetic_problems(monkeypatch, gsm8k_dir):
    from grpo_helpers.profiles import PROFILES

    monkeypatch.setenv("GSM8K_DIR", str(gsm8k_dir))
    assert load_gsm8k("test", PROFILES["tiny"])["question"] == [r["question"] for r in data.synthetic_gsm8k(300, seed=3408)][:64]


def test_bad_split_and_source():
    with pytest.raises(ValueError):
        load_gsm8k("validation")
    with pytest.raises(ValueError):
        load_gsm8k("test", source="kaggle")
