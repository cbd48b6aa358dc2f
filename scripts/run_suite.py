"""Execute the notebooks in order, saving executed copies and a summary under outputs/; end with the results card."""

from __future__ import annotations

import json
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from grpo_helpers.paths import project_root
from grpo_helpers.profiles import get_profile
from grpo_helpers.results_card import card_path, card_summary

ROOT = project_root()


def main() -> int:
    profile = get_profile()  # $GRPO_PROFILE or the hardware; says which and why
    out_dir = ROOT / "outputs" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    suite_start = time.time()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        start = time.monotonic()
        status = "ok"
        try:
            NotebookClient(nb, timeout=None, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        except CellExecutionError as error:
            status = f"failed: {str(error).strip().splitlines()[-1][:200]}"
        seconds = time.monotonic() - start
        nbformat.write(nb, out_dir / path.name)
        rows.append({"notebook": path.name, "status": status, "seconds": round(seconds, 1)})
        print(f"{path.name}: {status} in {seconds:.0f} s", flush=True)
        if status != "ok":
            break
    summary = {"profile": profile.name, "notebooks": rows, "total_seconds": round(sum(r["seconds"] for r in rows), 1)}
    (ROOT / "outputs" / "suite_summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Suite run ({profile.name} profile)", "", "| notebook | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['status']} | {r['seconds']} |" for r in rows]
    card = card_path(profile)
    if card.is_file() and card.stat().st_mtime >= suite_start:
        learned = f"What the run learned (from its results card, {card}):\n\n{card_summary(card)}"
    else:
        learned = f"No results card from this run at {card}: notebook 05 did not finish (see {out_dir})."
    lines += ["", learned]
    (ROOT / "outputs" / "suite_summary.md").write_text("\n".join(lines) + "\n")
    print(f"Executed notebooks in {out_dir}; summary in outputs/suite_summary.md\n\n{learned}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
