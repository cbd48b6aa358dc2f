from pathlib import Path

from grpo_helpers import paths


def test_env_var_wins(artifacts):
    assert paths.artifacts_dir() == artifacts and artifacts.is_dir()


def test_profile_folders_are_separate(artifacts):
    assert paths.checkpoints_dir("tiny").parent == artifacts / "tiny"
    assert paths.adapter_dir("t4") != paths.adapter_dir("tiny")


def test_default_is_outputs_under_the_project(monkeypatch, tmp_path):
    monkeypatch.delenv("GRPO_ARTIFACTS", raising=False)
    monkeypatch.setattr(paths, "DRIVE_ROOT", tmp_path / "no-drive")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "grpo_helpers").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert paths.artifacts_dir() == tmp_path / "outputs"


def test_mount_drive_respects_the_env_var(artifacts, capsys):
    assert paths.mount_drive(True) == artifacts
    assert str(artifacts) in capsys.readouterr().out


def test_mount_drive_off_colab_keeps_local_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GRPO_ARTIFACTS", raising=False)
    monkeypatch.setattr(paths, "DRIVE_ROOT", tmp_path / "no-drive")
    monkeypatch.chdir(tmp_path)
    assert paths.mount_drive(True) == tmp_path / "outputs"
    assert "Not on Colab" in capsys.readouterr().out


def test_exports_go_to_local_disk_on_colab(artifacts, monkeypatch):
    from grpo_helpers import runtime

    monkeypatch.setattr(runtime, "is_colab", lambda: True)
    assert paths.export_dir("t4") == paths.COLAB_EXPORT_ROOT / "t4" == Path("/content/export/t4")
    monkeypatch.setattr(runtime, "is_colab", lambda: False)
    assert paths.export_dir("t4") == artifacts / "t4" / "export"
    assert not paths.export_dir("t4").exists()  # created by the export, after its free-space check
