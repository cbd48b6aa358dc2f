"""Rewrite every copy of the repository URL and release ref from grpo_helpers/install.py.

The copies: each notebook's bootstrap cell (cell 1) and Colab badge, the image links in the
notebooks, and the badges in README.md. Run it after changing REPO_URL or the version; `--check` only
reports, and tests/test_install.py fails until the copies agree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpo_helpers import install  # noqa: E402

COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/notebooks/([\w.]+\.ipynb)")
RAW_LINK = re.compile(r"https://raw\.githubusercontent\.com/[^/\s)]+/[^/\s)]+/[^/\s)]+/(assets/[^\s)\"]+)")
RELEASE_WORDS = re.compile(r"(release \*\*)v[0-9][0-9A-Za-z.+-]*(\*\*)")  # README: "release **v0.3.0**"


def sync_text(text: str) -> str:
    """Point every Colab badge, raw link and "release **vX**" in `text` at REPO_URL and RELEASE_REF."""
    text = COLAB_LINK.sub(lambda m: install.colab_url(m.group(1)), text)
    text = RELEASE_WORDS.sub(lambda m: f"{m.group(1)}{install.RELEASE_REF}{m.group(2)}", text)
    return RAW_LINK.sub(lambda m: install.raw_url(m.group(1)), text)


def sync_notebook(path: Path, write: bool) -> bool:
    """Rewrite a notebook's bootstrap cell and links (when `write`); True when anything differs."""
    original = path.read_text()
    nb = json.loads(original)
    kit = install.NOTEBOOK_KITS[path.stem]
    first_code = next(cell for cell in nb["cells"] if cell["cell_type"] == "code")
    first_code["source"] = install.bootstrap_cell(kit).rstrip("\n").splitlines(keepends=True)
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = sync_text("".join(cell["source"])).splitlines(keepends=True)
    updated = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if write and updated != original:
        path.write_text(updated)
    return updated != original


def main(check: bool) -> int:
    """Sync the notebooks and README.md (or, with --check, only say which differ); 1 if any did."""
    changed = [p.name for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) if sync_notebook(p, not check)]
    readme = ROOT / "README.md"
    text = readme.read_text()
    if sync_text(text) != text:
        if not check:
            readme.write_text(sync_text(text))
        changed.append("README.md")
    verb = "differ (run scripts/sync_release.py)" if check else "updated"
    print(f"{install.REPO_URL} @ {install.RELEASE_REF}: " + (f"{', '.join(changed)} {verb}" if changed else "all copies agree"))
    return int(check and bool(changed))


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv[1:]))
