import json
from pathlib import Path

from grpo_helpers import install

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = install.read_requirements(ROOT / "requirements.txt")


def test_plan_agrees_with_requirements_on_every_shared_package():
    for capability in [(7, 5), (8, 0), None]:
        plan = install.plan_pins(install.colab_install_plan(capability))
        shared = set(plan) & set(REQUIREMENTS)
        assert {"transformers", "trl", "peft", "unsloth", "unsloth-zoo", "bitsandbytes"} <= shared
        disagreements = {n: (plan[n], REQUIREMENTS[n]) for n in shared if plan[n] != REQUIREMENTS[n]}
        assert not disagreements, f"install plan vs requirements.txt: {disagreements}"


def test_t4_gets_the_last_vllm_with_a_t4_backend():
    assert install.plan_pins(install.colab_install_plan((7, 5)))["vllm"] == "0.11.2"
    assert install.plan_pins(install.colab_install_plan((8, 6)))["vllm"] == install.VLLM_FOR_NEWER_GPUS
    assert "vllm" not in install.plan_pins(install.colab_install_plan(None))


def test_unsloth_is_installed_without_its_dependencies():
    for command in install.colab_install_plan((7, 5)):
        if any(arg.startswith("unsloth==") for arg in command):
            assert "--no-deps" in command


def test_plan_never_installs_torchvision_or_moves_torch_after_vllm():
    plan = install.colab_install_plan((7, 5))
    names = install.plan_pins(plan)
    assert "torchvision" not in names and "torch" not in names
    assert any("vllm==" in arg for arg in plan[0])  # vLLM first: it chooses the torch build


def test_plan_installs_this_package_from_the_repo():
    plan = install.colab_install_plan((7, 5))
    assert plan[-1][-1] == f"git+{install.REPO_URL}"


def test_notebook_bootstrap_installs_from_the_same_repo():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert install.REPO_URL in "".join(cells[0]["source"]), path.name


def test_dry_run_lists_commands_without_installing(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "STAMP", tmp_path / "stamp")
    monkeypatch.setattr(install, "gpu_compute_capability", lambda: (7, 5))
    plan = install.install_colab_stack(dry_run=True)
    assert plan == install.colab_install_plan((7, 5)) and not (tmp_path / "stamp").exists()


def test_installed_versions_reports_the_stack():
    versions = install.installed_versions()
    assert versions["transformers"] == REQUIREMENTS["transformers"]
    assert versions["trl"] == REQUIREMENTS["trl"]
