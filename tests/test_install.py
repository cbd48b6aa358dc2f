"""The Colab install plan and the notebooks' bootstrap: pins in step, one release ref, no stranded user."""

import json
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

import grpo_helpers
from grpo_helpers import install

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = install.read_requirements(ROOT / "requirements.txt")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SYNC = ROOT / "scripts" / "sync_release.py"


def first_code_cell(path: Path) -> str:
    return "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])


# The plan -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kit", list(install.KITS))
def test_plan_agrees_with_requirements_on_every_shared_package(kit):
    for capability in [(7, 5), (8, 0), None]:
        plan = install.plan_pins(install.colab_install_plan(capability, kit))
        # torch is the one deliberate difference: CI runs a CPU build, vLLM needs its own CUDA one
        shared = set(plan) & set(REQUIREMENTS) - set(install.VLLM_TORCH)
        assert {"transformers", "trl", "peft"} <= shared
        disagreements = {n: (plan[n], REQUIREMENTS[n]) for n in shared if plan[n] != REQUIREMENTS[n]}
        assert not disagreements, f"install plan vs requirements.txt: {disagreements}"


def test_t4_gets_the_last_vllm_with_a_t4_backend_and_its_torch():
    t4 = install.plan_pins(install.colab_install_plan((7, 5)))
    assert t4["vllm"] == "0.11.2" and t4["torch"] == "2.9.0" and t4["torchvision"] == "0.24.0"
    assert install.plan_pins(install.colab_install_plan((8, 6)))["vllm"] == install.VLLM_FOR_NEWER_GPUS
    assert "vllm" not in install.plan_pins(install.colab_install_plan(None))


def test_vllm_and_its_torch_come_first_and_nothing_later_moves_torch():
    plan = install.colab_install_plan((7, 5))
    assert {"vllm", *install.VLLM_TORCH} <= set(install.plan_pins(plan[:1]))
    later = install.plan_pins(plan[1:])
    assert not set(later) & {"vllm", *install.VLLM_TORCH}


def test_unsloth_is_installed_without_its_dependencies():
    steps = [s for s in install.colab_install_plan((7, 5)) if any(r.startswith("unsloth==") for r in s.requirements)]
    assert len(steps) == 1 and steps[0].no_deps and steps[0].uv_args()[0] == "--no-deps"


def test_light_kit_brings_no_vllm_unsloth_or_cuda_wheels():
    light = install.plan_pins(install.colab_install_plan((7, 5), "light"))
    assert {"transformers", "trl", "datasets"} <= set(light)
    assert not set(light) & {"vllm", "torch", "torchvision", "unsloth", "bitsandbytes", *install.GPU_ONLY_PINS}


def test_same_torch_version_of_another_cuda_build_is_reinstalled():
    colab_2026_01 = {"torch": "2.9.0+cu126", "torchvision": "0.24.0+cu126", "numpy": "2.0.2"}
    assert set(install.colab_install_plan((7, 5), installed=colab_2026_01)[0].reinstall) == {"torch", "torchvision"}
    assert "--reinstall-package=torch" in install.colab_install_plan((7, 5), installed=colab_2026_01)[0].uv_args()
    for installed in ({"torch": "2.11.0+cu128"}, {"torch": "2.9.0"}, {}):
        assert install.colab_install_plan((7, 5), installed=installed)[0].reinstall == ()


def test_unknown_kit_names_the_valid_ones():
    with pytest.raises(ValueError, match="full, light"):
        install.colab_install_plan((7, 5), "everything")


def test_installed_versions_reports_the_stack():
    versions = install.installed_versions()
    assert versions["transformers"] == REQUIREMENTS["transformers"]
    assert versions["trl"] == REQUIREMENTS["trl"]
    assert install.installed_distributions()["trl"] == REQUIREMENTS["trl"]


# One repository URL and release ref, copied in step ---------------------------------------------

def test_release_ref_is_the_package_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert install.RELEASE_REF == f"v{grpo_helpers.__version__}" == f"v{pyproject['project']['version']}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_bootstrap_cell_is_the_one_install_py_writes(path):
    assert first_code_cell(path).strip() == install.bootstrap_cell(install.NOTEBOOK_KITS[path.stem]).strip(), (
        "run `python scripts/sync_release.py`")


def test_only_the_rewards_and_objective_notebooks_take_the_light_kit():
    assert set(install.NOTEBOOK_KITS) == {p.stem for p in NOTEBOOKS}
    assert {stem for stem, kit in install.NOTEBOOK_KITS.items() if kit == "light"} == {"02_rewards", "03_objective"}


def test_every_badge_and_image_link_points_at_the_release():
    texts = {p.name: p.read_text() for p in [*NOTEBOOKS, ROOT / "README.md"]}
    colab = re.compile(r"https://colab\.research\.google\.com/github/\S+?/notebooks/([\w.]+\.ipynb)")
    raw = re.compile(r"https://raw\.githubusercontent\.com/[^\s)\"]+?/(assets/[\w.]+)")
    badges = 0
    for name, text in texts.items():
        for match in colab.finditer(text):
            assert match.group(0) == install.colab_url(match.group(1)), name
            badges += 1
        for match in raw.finditer(text):
            assert match.group(0) == install.raw_url(match.group(1)), name
    assert badges == 2 * len(NOTEBOOKS)  # one in each notebook, one per notebook in the README
    assert install.colab_url("00_setup.ipynb").endswith(f"/blob/{install.RELEASE_REF}/notebooks/00_setup.ipynb")


def test_sync_script_finds_nothing_to_change():
    done = subprocess.run([sys.executable, str(SYNC), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


# The bootstrap ----------------------------------------------------------------------------------

def test_bootstrap_does_nothing_off_colab(monkeypatch):
    monkeypatch.setattr(install.runtime, "is_colab", lambda: False)
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("ran a command off Colab"))
    assert install.bootstrap("full") == []


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """A Colab runtime whose install only records what it would run."""
    state = {"installed": {"numpy": "2.1.3", "torch": "2.11.0+cu128"}, "runs": [], "killed": []}

    def run_plan(plan, kit):
        state["runs"].append(kit)
        state["installed"] = {**state["installed"], **install.plan_pins(plan)}

    monkeypatch.setattr(install.runtime, "is_colab", lambda: True)
    monkeypatch.setattr(install, "STAMP", tmp_path / "stamp")
    monkeypatch.setattr(install, "gpu_compute_capability", lambda: (7, 5))
    monkeypatch.setattr(install, "installed_distributions", lambda: dict(state["installed"]))
    monkeypatch.setattr(install, "run_plan", run_plan)
    monkeypatch.setattr(install, "imported_distributions", lambda: {"numpy", "pillow"})
    monkeypatch.setattr(install.os, "kill", lambda pid, sig: state["killed"].append(sig))
    return state


def test_bootstrap_installs_once_per_runtime_and_light_after_full_is_free(fake_colab):
    plan = install.bootstrap("full")
    assert fake_colab["runs"] == ["full"] and plan == install.colab_install_plan((7, 5), installed={
        "numpy": "2.1.3", "torch": "2.11.0+cu128"})
    assert fake_colab["killed"] == []  # torch changed, but nothing had imported it: no restart
    install.bootstrap("full")
    install.bootstrap("light")
    assert fake_colab["runs"] == ["full"]


def test_bootstrap_restarts_when_an_imported_package_changed(fake_colab, capsys, monkeypatch):
    fake_colab["installed"]["numpy"] = "1.26.4"  # pretend the plan moves numpy, which Colab has imported
    original = install.run_plan

    def moving_numpy(plan, kit):
        original(plan, kit)
        fake_colab["installed"]["numpy"] = "2.1.3"

    monkeypatch.setattr(install, "run_plan", moving_numpy)
    install.bootstrap("full")
    assert len(fake_colab["killed"]) == 1 and "numpy changed" in capsys.readouterr().out


def test_failed_step_is_one_short_message_not_a_traceback(monkeypatch):
    failing_uv = [sys.executable, "-c", "import sys; sys.stderr.write('No solution found: vllm==9.9\\n'); sys.exit(2)"]
    monkeypatch.setattr(install, "_uv", lambda: failing_uv)
    with pytest.raises(install.BootstrapError) as failure:
        install.run_plan([install.InstallStep(("vllm==9.9",), why="a test")], "full")
    message = str(failure.value)
    assert "No solution found: vllm==9.9" in message and "Disconnect and delete runtime" in message
    assert failure.value._render_traceback_() == [f"BootstrapError: {message}"]


@pytest.fixture(scope="module")
def plain_python(tmp_path_factory):
    """A fresh Python with pip but without grpo_helpers, as on a new Colab runtime."""
    home = tmp_path_factory.mktemp("plain")
    venv.create(home / "env", system_site_packages=True, symlinks=True)
    python = str(home / "env" / "bin" / "python")
    found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('grpo_helpers'))"],
                           capture_output=True, text=True, cwd=home)
    if found.stdout.strip() != "None":
        pytest.skip("the base interpreter already has grpo_helpers installed")
    return python, home


def run_cell(python: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    source = first_code_cell(ROOT / "notebooks" / "02_rewards.ipynb")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GRPO_", "PYTHONPATH"))}
    return subprocess.run([python, "-c", source], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**environment, **env})


def test_unreachable_repository_stops_the_cell_with_a_short_message(plain_python):
    python, home = plain_python
    done = run_cell(python, home, GRPO_REPO=f"file://{home}/no-such-repo")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"Could not install grpo_helpers from file://{home}/no-such-repo at {install.RELEASE_REF}" in done.stderr
    assert "GRPO_REPO/GRPO_REF" in done.stderr and len(done.stderr.splitlines()) <= 3


@pytest.mark.slow
def test_cell_installs_helpers_at_the_ref_then_does_nothing(plain_python):
    python, home = plain_python
    fork = home / "fork"  # this working tree, published as a repository with the release tag
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (fork / name).parent.mkdir(parents=True, exist_ok=True)
            (fork / name).write_bytes((ROOT / name).read_bytes())
    git = ["git", "-C", str(fork), "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "release"], ["tag", install.RELEASE_REF]):
        subprocess.run([*git, *command], check=True, capture_output=True)
    wrong = run_cell(python, home, GRPO_REPO=f"file://{fork}", GRPO_REF="no-such-tag")
    assert wrong.returncode == 1 and "at no-such-tag" in wrong.stderr and "Traceback" not in wrong.stderr
    done = run_cell(python, home, GRPO_REPO=f"file://{fork}")  # the release ref the cell names
    assert done.returncode == 0, done.stderr
    shown = subprocess.run([python, "-m", "pip", "show", "grpo-helpers"], capture_output=True, text=True).stdout
    assert f"Version: {grpo_helpers.__version__}" in shown
    again = run_cell(python, home, GRPO_REPO=f"file://{home}/no-such-repo")  # importable now: nothing to do
    assert again.returncode == 0 and again.stdout == again.stderr == ""
