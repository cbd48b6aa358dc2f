"""scripts/colab_rehearsal.py: its pure parts on small fixtures, no network."""

import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.tags import Tag

from grpo_helpers import install

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "colab_rehearsal.py"
spec = importlib.util.spec_from_file_location("colab_rehearsal", SCRIPT)
rehearsal = importlib.util.module_from_spec(spec)
sys.modules["colab_rehearsal"] = rehearsal
spec.loader.exec_module(rehearsal)

MARKERS = rehearsal.marker_environment("3.12.12")
FREEZE = """\
# Do not modify this file directly
Accelerate==1.12.0
torch==2.9.0+cu126
cudf-cu12 @ https://pypi.nvidia.com/cudf-cu12/cudf_cu12-25.10.0-cp312-cp312-manylinux_2_24_x86_64.whl
google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz
jupyter_kernel_gateway @ git+https://github.com/googlecolab/kernel_gateway@b134e99
"""


def entry(version, *requires, python=None):
    return rehearsal.Entry(version, rehearsal.Meta("x", version.split("+")[0], python, requires))


def index_file(filename, size=1):
    return rehearsal.IndexFile(filename, f"https://files.example/{filename}", size)


def test_freeze_keeps_local_versions_and_reads_versions_from_urls():
    packages = rehearsal.parse_freeze(FREEZE)
    assert packages["accelerate"] == rehearsal.Installed("accelerate", "1.12.0")
    assert packages["torch"].version == "2.9.0+cu126"
    assert packages["cudf-cu12"].version == "25.10.0" and packages["cudf-cu12"].url.startswith("https://")
    assert packages["google-colab"].version == "1.0.0"
    assert packages["jupyter-kernel-gateway"].version is None
    assert len(packages) == 5


def test_python_version_comes_from_the_os_info():
    assert rehearsal.parse_python_version("Ubuntu 22.04.5 LTS\nPython 3.13.15\nR version 4.6\n") == "3.13.15"
    with pytest.raises(ValueError):
        rehearsal.parse_python_version("Ubuntu 22.04.5 LTS\n")


def test_snapshots_default_to_colab_snapshots_latest_first(tmp_path, monkeypatch):
    for name in ("2026.01", "latest", "2026.07"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pip-freeze.gpu.txt").write_text("six==1.17.0\n")
    (tmp_path / "README.md").write_text("")
    monkeypatch.setenv("COLAB_SNAPSHOTS", str(tmp_path))
    assert [path.name for path in rehearsal.default_snapshots()] == ["latest", "2026.07", "2026.01"]


def test_wheel_choice_follows_colabs_tags():
    ranks = {tag: i for i, tag in enumerate(rehearsal.colab_tags("3.13.15"))}
    assert Tag("cp313", "cp313", "manylinux2014_x86_64") in ranks
    assert Tag("cp313", "cp313", "manylinux_2_39_x86_64") not in ranks  # newer than Ubuntu 22.04's glibc
    files = [index_file(name) for name in (
        "pkg-1.0-py3-none-any.whl", "pkg-1.0-cp38-abi3-manylinux1_x86_64.whl",
        "pkg-1.0-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "pkg-1.0-cp313-cp313-manylinux_2_39_x86_64.whl", "pkg-1.0-cp313-cp313-musllinux_1_2_x86_64.whl",
        "pkg-1.0-cp312-cp312-manylinux_2_28_x86_64.whl", "pkg-1.0.tar.gz")]
    assert rehearsal.best_wheel(files, ranks).filename.startswith("pkg-1.0-cp313-cp313-manylinux_2_17")
    assert rehearsal.best_wheel(files[:2], ranks).filename == "pkg-1.0-cp38-abi3-manylinux1_x86_64.whl"
    assert rehearsal.best_wheel(files[3:], ranks) is None


def test_release_of_reads_wheel_and_sdist_names():
    assert str(rehearsal.release_of("huggingface_hub-0.36.2-py3-none-any.whl")) == "0.36.2"
    assert str(rehearsal.release_of("python-louvain-0.16.tar.gz")) == "0.16"
    assert rehearsal.release_of("pkg-1.0.exe") is None


def test_breaks_evaluate_markers_and_ignore_extras():
    entries = {
        "app": entry("1.0", "lib>=2", "dev-tool; extra == 'dev'", "winlib; sys_platform == 'win32'",
                     "old<1; python_version < '3.10'", "new>=3; python_version >= '3.12'", "torch==2.9.0"),
        "lib": entry("1.5"), "new": entry("2.0"), "torch": entry("2.9.0+cu126"),
        "modern": entry("1.0", python=">=3.13"),
    }
    found = {(item.requirer, item.required): item for item in rehearsal.find_breaks(entries, MARKERS)}
    assert set(found) == {("app", "lib"), ("app", "new"), ("modern", "python")}
    assert found["app", "lib"].describe() == "app 1.0 requires lib>=2, has 1.5"
    assert found["modern", "python"].installed == "3.12.12"


def test_only_new_breaks_count_split_into_ours_accepted_and_elsewhere():
    before = [rehearsal.Break("gradio", "6.2", "pandas<2", "pandas", "2.2.2")]
    after = [rehearsal.Break("gradio", "6.2", "pandas<2", "pandas", "2.3.0"),  # broken before already
             rehearsal.Break("gradio", "6.2", "huggingface-hub>=1", "huggingface-hub", "0.36.2"),
             rehearsal.Break("unsloth", "2026.10.9", "certifi>=2026.10.19", "certifi", "2026.1.4"),
             rehearsal.Break("trl", "0.22.2", "rich>=14", "rich", "13.9.4")]
    conflicts, accepted, elsewhere = rehearsal.classify_breaks(before, after, {"unsloth", "trl", "huggingface-hub"})
    assert [item.requirer for item in conflicts] == ["trl"]
    assert [(item.requirer, why) for item, why in accepted] == [
        ("unsloth", rehearsal.ACCEPTED_BREAKS["unsloth", "certifi"])]
    assert [item.required for item in elsewhere] == ["huggingface-hub"]


def test_dependency_closure_follows_installed_requirements_only():
    entries = {"trl": entry("0.22.2", "accelerate", "missing"), "accelerate": entry("1.10.1", "torch"),
               "torch": entry("2.9.0"), "gradio": entry("6.2", "torch")}
    assert rehearsal.dependency_closure(["trl"], entries, MARKERS) == {"trl", "accelerate", "torch"}


def test_a_stand_in_build_keeps_only_what_the_runtime_satisfies():
    meta = rehearsal.Meta("torch", "2.11.0", None, ("nvidia-cublas==13.1.0.3", "filelock", "sympy>=1.13.3", "bad req!"))
    kept = rehearsal.satisfied_only(meta, {"filelock": "3.20.0", "sympy": "1.13.1", "nvidia-cublas-cu12": "12.8.4.1"})
    assert kept.requires_dist == ("filelock",)


def test_applying_uv_lines_updates_the_fake_env(tmp_path):
    env = rehearsal.FakeEnv(tmp_path)
    env.add("numpy", "2.0.2", rehearsal.Meta("numpy", "2.0.2", ">=3.10"))
    env.add("torch", "2.9.0+cu126", rehearsal.Meta("torch", "2.9.0", None, ("filelock",), ("opt-einsum",)))
    output = ("Resolved 3 packages in 1ms\nWould uninstall 2 packages\nWould install 3 packages\n"
              " - numpy==2.0.2\n + numpy==2.2.0\n - torch==2.9.0+cu126\n + torch==2.9.0\n + six==1.17.0\n")
    changes = rehearsal.parse_uv_changes(output)
    assert changes[:2] == [("-", "numpy", "2.0.2"), ("+", "numpy", "2.2.0")]
    metas = {("numpy", "2.2.0"): rehearsal.Meta("numpy", "2.2.0"), ("torch", "2.9.0"): rehearsal.Meta("torch", "2.9.0"),
             ("six", "1.17.0"): None}
    env.apply(changes, {key: rehearsal.Lookup(meta, None) for key, meta in metas.items()})
    assert {name: item.version for name, item in env.entries.items()} == {
        "numpy": "2.2.0", "torch": "2.9.0", "six": "1.17.0"}
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "numpy-2.2.0.dist-info", "six-1.17.0.dist-info", "torch-2.9.0.dist-info"]
    assert {"METADATA", "INSTALLER", "RECORD"} <= {path.name for path in (tmp_path / "six-1.17.0.dist-info").iterdir()}


def test_fake_metadata_carries_the_installed_version_and_round_trips():
    meta = rehearsal.Meta("torch", "2.9.0", ">=3.10", ("filelock", "triton==3.5.0; platform_system == 'Linux'"),
                          ("opt-einsum",))
    text = rehearsal.metadata_text(meta, "2.9.0+cu126")
    assert "Version: 2.9.0+cu126\n" in text
    assert rehearsal.parse_metadata(text) == rehearsal.Meta("torch", "2.9.0+cu126", ">=3.10", meta.requires_dist,
                                                                     meta.provides_extra)


def test_accepted_breaks_are_only_for_packages_the_plan_installs_without_deps():
    no_deps = {name for step in install.colab_install_plan((7, 5), "full") if step.no_deps
               for name in install.plan_pins([step])}
    for (requirer, required), why in rehearsal.ACCEPTED_BREAKS.items():
        assert requirer in no_deps and required and why
    assert set(rehearsal.RESTART_IF_CHANGED) == {"numpy", "pillow"}


def wheel_bytes():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pkg/__init__.py", "x = 1\n" * 50_000)
        archive.writestr("pkg-1.0.dist-info/METADATA",
                         "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nRequires-Dist: six\n")
    return buffer.getvalue()


def fake_http(files: dict[str, bytes]):
    """An http_get that serves these URLs, honouring Range headers, 404 for anything else."""
    def get(url, headers=None):
        if url not in files:
            return 404, b""
        if headers and "Range" in headers:
            start, end = (int(part) for part in headers["Range"].removeprefix("bytes=").split("-"))
            return 206, files[url][start:end + 1]
        return 200, files[url]
    return get


def test_metadata_is_read_by_range_requests_when_the_index_has_no_metadata_file(monkeypatch):
    data = wheel_bytes()
    wheel = index_file("pkg-1.0-py3-none-any.whl", len(data))
    monkeypatch.setattr(rehearsal, "TAIL_BYTES", 200)  # force reads outside the first span
    monkeypatch.setattr(rehearsal, "http_get", fake_http({wheel.url: data}))
    assert rehearsal.wheel_metadata(wheel) == rehearsal.Meta("pkg", "1.0", None, ("six",))


def test_lookup_handles_local_versions_sdists_and_unknown_projects(tmp_path, monkeypatch):
    files = [{"filename": name, "url": f"https://files.example/{name}", "size": 7} for name in
             ("torch-2.9.0-cp312-cp312-manylinux_2_28_x86_64.whl", "oldpkg-0.1.tar.gz")]
    metadata = b"Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0\nRequires-Dist: filelock\n"
    monkeypatch.setattr(rehearsal, "http_get", fake_http({
        f"{rehearsal.INDEX_URL}/torch/": json.dumps({"files": files[:1]}).encode(),
        f"{rehearsal.INDEX_URL}/oldpkg/": json.dumps({"files": files[1:]}).encode(),
        files[0]["url"] + ".metadata": metadata}))
    index = rehearsal.Index(tmp_path)
    torch = index.lookup("torch", "2.9.0+cu126", "3.12.12")
    assert torch.stand_in and torch.meta.requires_dist == ("filelock",) and torch.download.size == 7
    assert not index.lookup("torch", "2.9.0", "3.12.12").stand_in
    assert index.lookup("torch", "2.8.0", "3.12.12").note == "2.8.0 not on the index"
    assert index.lookup("oldpkg", "0.1", "3.12.12").meta is None
    assert index.lookup("nothere", "1.0", "3.12.12").note == "not on the index"
    assert (tmp_path / "metadata" / "torch==2.9.0.json").is_file()
