"""GSM8K from the Hub, from local JSONL files ($GSM8K_DIR), or from our seeded synthetic generator."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import runtime

if TYPE_CHECKING:
    import datasets

    from .profiles import Profile

GSM8K_HUB_ID = "openai/gsm8k"
GSM8K_HUB_CONFIG = "main"
GSM8K_DIR_ENV = "GSM8K_DIR"
SPLITS = ("train", "test")
SYNTHETIC_SIZES = {"train": 2000, "test": 300}

SYSTEM_PROMPT = """Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>"""


class GSM8KDirError(FileNotFoundError):
    """$GSM8K_DIR is set but does not hold the expected JSONL files."""


def extract_hash_answer(solution: str) -> str | None:
    """The gold answer of a GSM8K solution: the text after '####', without thousands commas."""
    if not isinstance(solution, str) or "####" not in solution:
        return None
    answer = solution.split("####")[-1].strip().replace(",", "")
    return answer or None


def format_prompt(question: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The chat messages the model sees: our system prompt, then the question."""
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]


def format_completion(reasoning: str, answer: str) -> str:
    """A well-formed reply in the system prompt's format (for tests, demos and the warm start)."""
    return f"<reasoning>\n{reasoning.strip()}\n</reasoning>\n<answer>\n{answer.strip()}\n</answer>"


def solution_reasoning(solution: str) -> str:
    """The worked steps of a GSM8K solution, without the '#### N' line and calculator marks."""
    steps = solution.split("####")[0]
    while "<<" in steps and ">>" in steps.split("<<", 1)[1]:
        head, rest = steps.split("<<", 1)
        steps = head + rest.split(">>", 1)[1]
    return steps.strip()


# --- the synthetic GSM8K-style generator --------------------------------------------------------

def _shopping(r: random.Random) -> tuple[str, list[str], int]:
    name, item = r.choice(_NAMES), r.choice(["pencils", "notebooks", "apples", "stickers", "cookies"])
    n, price, paid = r.randint(2, 12), r.randint(1, 9), 0
    total = n * price
    paid = total + r.randint(1, 20)
    change = paid - total
    q = (f"{name} buys {n} {item} that cost ${price} each. {name} pays with ${paid}. "
         f"How much change does {name} get back?")
    steps = [f"The {item} cost {n} * {price} = <<{n}*{price}={total}>>{total} dollars.",
             f"The change is {paid} - {total} = <<{paid}-{total}={change}>>{change} dollars."]
    return q, steps, change


def _sharing(r: random.Random) -> tuple[str, list[str], int]:
    name, friends = r.choice(_NAMES), r.randint(2, 6)
    each, kept = r.randint(2, 15), r.randint(1, 10)
    total = friends * each + kept
    q = (f"{name} has {total} marbles. {name} keeps {kept} and shares the rest equally among "
         f"{friends} friends. How many marbles does each friend get?")
    shared = total - kept
    steps = [f"{name} shares {total} - {kept} = <<{total}-{kept}={shared}>>{shared} marbles.",
             f"Each friend gets {shared} / {friends} = <<{shared}/{friends}={each}>>{each} marbles."]
    return q, steps, each


def _savings(r: random.Random) -> tuple[str, list[str], int]:
    name, weekly, weeks, spent = r.choice(_NAMES), r.randint(3, 25), r.randint(2, 10), 0
    saved = weekly * weeks
    spent = r.randint(1, saved - 1)
    left = saved - spent
    q = (f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a game. "
         f"How many dollars does {name} have left?")
    steps = [f"{name} saves {weekly} * {weeks} = <<{weekly}*{weeks}={saved}>>{saved} dollars.",
             f"After the game {name} has {saved} - {spent} = <<{saved}-{spent}={left}>>{left} dollars."]
    return q, steps, left


def _speed(r: random.Random) -> tuple[str, list[str], int]:
    speed, hours, extra = r.randint(20, 70), r.randint(2, 6), r.randint(5, 60)
    first = speed * hours
    total = first + extra
    q = (f"A train travels at {speed} miles per hour for {hours} hours, then another {extra} miles. "
         f"How many miles does it travel in total?")
    steps = [f"In {hours} hours it travels {speed} * {hours} = <<{speed}*{hours}={first}>>{first} miles.",
             f"In total it travels {first} + {extra} = <<{first}+{extra}={total}>>{total} miles."]
    return q, steps, total


def _ages(r: random.Random) -> tuple[str, list[str], int]:
    a, b = r.sample(_NAMES, 2)
    age_b, diff, years = r.randint(3, 30), r.randint(2, 20), r.randint(2, 15)
    age_a = age_b + diff
    future = age_a + years
    q = f"{a} is {diff} years older than {b}. {b} is {age_b} years old. How old will {a} be in {years} years?"
    steps = [f"{a} is {age_b} + {diff} = <<{age_b}+{diff}={age_a}>>{age_a} years old.",
             f"In {years} years {a} will be {age_a} + {years} = <<{age_a}+{years}={future}>>{future}."]
    return q, steps, future


def _discount(r: random.Random) -> tuple[str, list[str], int]:
    item = r.choice(["jacket", "bike", "lamp", "backpack", "chair"])
    price = 20 * r.randint(1, 20)  # a multiple of 20: every discount below is whole dollars
    percent = r.choice([10, 20, 25, 50])
    off = price * percent // 100
    final = price - off
    q = f"A {item} costs ${price}. It is on sale for {percent}% off. What is the sale price in dollars?"
    steps = [f"The discount is {price} * {percent} / 100 = <<{price}*{percent}/100={off}>>{off} dollars.",
             f"The sale price is {price} - {off} = <<{price}-{off}={final}>>{final} dollars."]
    return q, steps, final


def _garden(r: random.Random) -> tuple[str, list[str], int]:
    name, rows, per_row, eaten = r.choice(_NAMES), r.randint(3, 12), r.randint(4, 15), 0
    plants = rows * per_row
    eaten = r.randint(1, plants // 2)
    left = plants - eaten
    q = (f"{name} plants {rows} rows of tomatoes with {per_row} plants in each row. Rabbits eat "
         f"{eaten} plants. How many plants are left?")
    steps = [f"{name} plants {rows} * {per_row} = <<{rows}*{per_row}={plants}>>{plants} plants.",
             f"{plants} - {eaten} = <<{plants}-{eaten}={left}>>{left} plants are left."]
    return q, steps, left


def _wages(r: random.Random) -> tuple[str, list[str], int]:
    name, rate, hours, days = r.choice(_NAMES), r.randint(8, 30), r.randint(2, 8), r.randint(2, 6)
    per_day = rate * hours
    total = per_day * days
    q = (f"{name} earns ${rate} an hour and works {hours} hours a day for {days} days. "
         f"How much does {name} earn?")
    steps = [f"Each day {name} earns {rate} * {hours} = <<{rate}*{hours}={per_day}>>{per_day} dollars.",
             f"In {days} days that is {per_day} * {days} = <<{per_day}*{days}={total}>>{total} dollars."]
    return q, steps, total


_NAMES = ["Ava", "Ben", "Carla", "Dev", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jamal", "Kofi",
          "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vera"]
TEMPLATES: tuple[Callable[[random.Random], tuple[str, list[str], int]], ...] = (
    _shopping, _sharing, _savings, _speed, _ages, _discount, _garden, _wages)


def synthetic_gsm8k(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` GSM8K-style problems (`question`, `answer` ending in '#### N') from our own templates."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, steps, result = rng.choice(TEMPLATES)(rng)
        rows.append({"question": question, "answer": "\n".join(steps) + f"\n#### {result}"})
    return rows


# --- loading --------------------------------------------------------------------------------

def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers on port 443 (False offline or with HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        return False
    return runtime.host_reachable(host, timeout_s)


def _read_jsonl_dir(directory: str, split: str) -> list[dict[str, str]]:
    folder = Path(directory).expanduser()
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        where = f"it holds {found}" if found else ("it is empty of .jsonl files" if folder.is_dir() else "it does not exist")
        raise GSM8KDirError(f"${GSM8K_DIR_ENV}={directory!r} has no {split}.jsonl ({where}). Point it at a "
                            f"folder with GSM8K's train.jsonl and test.jsonl, or unset it to use the Hub.")
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [{"question": row["question"], "answer": row["answer"]} for row in rows]


def _raw_rows(split: str, source: str | None, seed: int) -> tuple[list[dict[str, str]], str]:
    directory = os.environ.get(GSM8K_DIR_ENV, "").strip()
    if source in (None, "dir") and directory:
        return _read_jsonl_dir(directory, split), f"{directory}/{split}.jsonl"
    if source == "dir":
        raise GSM8KDirError(f"source='dir' needs ${GSM8K_DIR_ENV} set to a folder with {split}.jsonl.")
    if source in (None, "hub"):
        if hub_reachable():
            import datasets

            ds = datasets.load_dataset(GSM8K_HUB_ID, GSM8K_HUB_CONFIG, split=split)
            return [{"question": q, "answer": a} for q, a in zip(ds["question"], ds["answer"])], f"Hub {GSM8K_HUB_ID}"
        if source == "hub":
            raise ConnectionError(f"The Hugging Face Hub is not reachable, so {GSM8K_HUB_ID} cannot be "
                                  f"downloaded. Set ${GSM8K_DIR_ENV} to local JSONL files, or use source='synthetic'.")
        print(f"No Hub access and no ${GSM8K_DIR_ENV}: using the synthetic GSM8K-style problems "
              f"instead (our own templates). Set ${GSM8K_DIR_ENV} to use the real questions offline.")
    size = SYNTHETIC_SIZES[split]
    return synthetic_gsm8k(size, seed=seed + (0 if split == "train" else 1)), "synthetic generator"


def load_gsm8k(split: str, profile: "Profile | None" = None, source: str | None = None) -> "datasets.Dataset":
    """GSM8K `split` as a Dataset with `prompt` (system + user messages), `answer` and `question`.

    `source` (else the profile's `data_source`): None tries $GSM8K_DIR, then the Hub, then the
    synthetic generator; "dir", "hub" or "synthetic" insist on one."""
    import datasets

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if source not in (None, "hub", "dir", "synthetic"):
        raise ValueError(f"source must be None (auto), 'hub', 'dir' or 'synthetic', not {source!r}")
    seed = profile.seed if profile else 3407
    if source is None and profile is not None:
        source = profile.data_source
    rows, origin = _raw_rows(split, source, seed)
    records = [{"prompt": format_prompt(row["question"]), "answer": extract_hash_answer(row["answer"]),
                "question": row["question"], "solution": row["answer"]} for row in rows]
    ds = datasets.Dataset.from_list([r for r in records if r["answer"] is not None])
    limit = (profile.train_limit if split == "train" else profile.test_limit) if profile else None
    if split == "train":
        ds = ds.shuffle(seed=seed)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    print(f"GSM8K {split}: {len(ds)} questions from {origin}.")
    return ds
