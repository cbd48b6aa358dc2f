import dataclasses

import pytest

from grpo_helpers import profiles, runtime
from grpo_helpers.profiles import PROFILES, ProfileError, get_profile


def test_profiles_are_frozen_and_named_by_their_key():
    for name, profile in PROFILES.items():
        assert profile.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            profile.max_steps = 1  # type: ignore[misc]


def test_by_name_wins_over_env(monkeypatch):
    monkeypatch.setenv("GRPO_PROFILE", "t4")
    assert get_profile("tiny").name == "tiny"


def test_env_picks_profile(monkeypatch, capsys):
    monkeypatch.setenv("GRPO_PROFILE", " TINY ")
    assert get_profile().name == "tiny"
    assert "from $GRPO_PROFILE" in capsys.readouterr().out


@pytest.mark.parametrize("cuda, expected", [(True, "t4"), (False, "tiny")])
def test_hardware_decides_without_env(monkeypatch, capsys, cuda, expected):
    monkeypatch.delenv("GRPO_PROFILE", raising=False)
    monkeypatch.setattr(runtime, "cuda_available", lambda: cuda)
    assert get_profile().name == expected
    assert ("CUDA GPU is present" if cuda else "no CUDA GPU") in capsys.readouterr().out


def test_unknown_profile_lists_the_valid_names(monkeypatch):
    monkeypatch.setenv("GRPO_PROFILE", "nonsense")
    with pytest.raises(ProfileError) as error:
        get_profile()
    message = str(error.value)
    assert "'nonsense'" in message and "t4" in message and "tiny" in message


def test_t4_without_cuda_says_how_to_get_a_t4(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    with pytest.raises(runtime.GPURequiredError, match="Change runtime type"):
        get_profile("t4")
    assert get_profile("t4", check_hardware=False).name == "t4"  # inspecting values is fine


def test_t4_fits_a_t4():
    t4 = PROFILES["t4"]
    assert t4.dtype == "float16" and t4.load_in_4bit and t4.fast_inference
    assert t4.max_prompt_length + t4.max_completion_length <= t4.max_seq_length
    assert (t4.per_device_train_batch_size * t4.gradient_accumulation_steps) % t4.num_generations == 0


def test_tiny_runs_without_gpu_or_vllm():
    tiny = PROFILES["tiny"]
    assert not tiny.requires_gpu and not tiny.fast_inference and tiny.dtype == "float32"
    assert tiny.per_device_train_batch_size % tiny.num_generations == 0


def test_replace_returns_a_changed_copy():
    tiny = PROFILES["tiny"]
    changed = tiny.replace(max_steps=3)
    assert changed.max_steps == 3 and tiny.max_steps != 3
    assert dict(tiny.as_table())["name"] == "tiny"


def test_model_name_marks_the_tiny_model():
    assert PROFILES["tiny"].model_name == profiles.TINY_MODEL_NAME
    assert "Llama-3.1-8B-Instruct" in PROFILES["t4"].model_name


def test_replace_refuses_an_unknown_field_and_lists_the_valid_ones():
    with pytest.raises(ProfileError, match=r"no field 'lerning_rate'.*Valid names: name, description,.*learning_rate"):
        PROFILES["t4"].replace(lerning_rate=1e-5)


def test_every_field_is_documented_where_it_is_declared():
    source = open(profiles.__file__).read()
    body = source[source.index("class Profile:"):source.index("    def replace(")]
    for field in dataclasses.fields(profiles.Profile):
        line = next(line for line in body.splitlines() if line.strip().startswith(f"{field.name}:"))
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"{field.name} has no comment"


def test_tiny_restates_only_what_differs_from_t4():
    source = open(profiles.__file__).read()
    tiny_block = source[source.index("TINY = T4.replace("):source.index("PROFILES: dict")]
    restated = [line.split("=")[0].strip() for line in tiny_block.splitlines()[1:] if "=" in line.split("#")[0]]
    same = [name for name in restated if getattr(profiles.TINY, name) == getattr(profiles.T4, name)]
    assert not same, f"TINY restates T4's values for {same}"
