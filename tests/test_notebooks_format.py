"""Every notebook follows the suite's rules: badge, bootstrap, parameters, T4 metadata, stored clean."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_numbered_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names[:2] == ["00_setup.ipynb", "01_load_model.ipynb"]
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(len(names))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_rules(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert cells[0]["cell_type"] == "markdown", "narrative first"
    assert f"/notebooks/{path.name}" in "".join(cells[0]["source"]) and "colab-badge" in "".join(cells[0]["source"])
    assert "Bootstrap" in "".join(code[0]["source"]) and "bootstrap(" in "".join(code[0]["source"])
    assert "parameters" in code[1].get("metadata", {}).get("tags", []), "second code cell is the parameters cell"
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, "stored without outputs"
    assert "widgets" not in nb["metadata"]
    assert nb["metadata"]["accelerator"] == "GPU" and nb["metadata"]["colab"]["gpuType"] == "T4"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_every_notebook_has_the_same_bootstrap_but_for_its_kit():
    bootstraps = {re.sub(r'bootstrap\("\w+"', 'bootstrap("KIT"',
                         "".join(next(c for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code")["source"]))
                  for p in NOTEBOOKS}
    assert len(bootstraps) == 1
