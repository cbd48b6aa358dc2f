"""Time per call of each default reward: on a realistic batch, on adversarial completions, and 200 KB vs 1 MB.

    python benchmarks/bench_rewards.py [--questions 16] [--repeats 20] [--math-verify]

The realistic batch is six replies per GSM8K question (rewards.example_completions: perfect,
one-line, chatty, wrong, untagged, cut off), from $GSM8K_DIR/test.jsonl when set, else from the
synthetic generator. Each adversarial completion (tests/test_rewards.py's adversarial_completions)
is ~200 KB and built to break naive parsers (unclosed and nested tags, 200,000-digit numbers,
100,000 numbers in one answer, unicode digits and fractions, number words); the budget is 50 ms
per reward per completion. The scaling table times all five rewards on each at 200 KB and at 1 MB:
linear time reads as a ratio near 5. --math-verify also times math_verify.parse on the same
answers, the reason it is not in the reward path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo_helpers import answers, data, rewards  # noqa: E402
from tests.test_rewards import adversarial_completions  # noqa: E402  (one corpus: the tests check, we time)

BUDGET_MS = 50.0
SIZES = (200_000, 1_000_000)


def realistic_batch(questions: int) -> tuple[list[str], list[str], str]:
    """Six example replies per question, their gold answers, and where the questions came from."""
    directory = os.environ.get(data.GSM8K_DIR_ENV, "").strip()
    if directory:
        with (Path(directory) / "test.jsonl").open(encoding="utf-8") as handle:
            rows = [json.loads(line) for _, line in zip(range(questions), handle)]
        origin = f"{directory}/test.jsonl"
    else:
        rows, origin = data.synthetic_gsm8k(questions, seed=0), "the synthetic generator"
    completions, golds = [], []
    for row in rows:
        gold = data.extract_hash_answer(row["answer"]) or "0"
        replies = rewards.example_completions(data.solution_reasoning(row["answer"]), gold)
        completions += replies.values()
        golds += [gold] * len(replies)
    return completions, golds, origin


def median_ms(call, repeats: int) -> float:
    """Median wall time of `call()` in milliseconds, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    """Time every default reward on both workloads and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--math-verify", action="store_true")
    args = parser.parse_args()

    completions, golds, origin = realistic_batch(args.questions)
    size_kb = sum(len(c) for c in completions) / 1000
    print(f"Realistic batch: {len(completions)} completions ({size_kb:.0f} KB) for {args.questions} "
          f"questions from {origin}; median of {args.repeats} calls\n")
    print(f"{'reward':<24}{'ms per batch call':>20}{'us per completion':>20}")
    for func in rewards.DEFAULT_REWARDS:
        ms = median_ms(lambda: func(prompts=None, completions=completions, answer=golds), args.repeats)
        print(f"{func.__name__:<24}{ms:>20.3f}{ms * 1000 / len(completions):>20.1f}")

    names = [f.__name__ for f in rewards.DEFAULT_REWARDS]
    small, large = (adversarial_completions(size) for size in SIZES)
    print(f"\nAdversarial completions, one per call; ms per call, median of {max(3, args.repeats // 4)} "
          f"(budget {BUDGET_MS:.0f} ms)\n")
    print(f"{'completion':<32}{'KB':>6}" + "".join(f"{n.replace('_reward', ''):>16}" for n in names))
    worst = dict.fromkeys(names, 0.0)
    for label, text in small.items():
        row = []
        for func in rewards.DEFAULT_REWARDS:
            ms = median_ms(lambda: func(prompts=None, completions=[text], answer=["5"]), max(3, args.repeats // 4))
            worst[func.__name__] = max(worst[func.__name__], ms)
            row.append(ms)
        print(f"{label:<32}{len(text) / 1000:>6.0f}" + "".join(f"{ms:>16.3f}" for ms in row))
    print(f"{'worst':<38}" + "".join(f"{worst[n]:>16.3f}" for n in names))
    over = [n for n in names if worst[n] > BUDGET_MS]
    print(f"\n{'OVER BUDGET: ' + ', '.join(over) if over else 'Every reward stays under the 50 ms budget.'}")

    print(f"\nAll five rewards on one completion, ms per call (median of 3): {SIZES[0] // 1000} KB vs "
          f"{SIZES[1] // 1000} KB; linear time is a ratio near {SIZES[1] / SIZES[0]:.0f}\n")
    print(f"{'completion':<32}{'200 KB':>10}{'1 MB':>10}{'ratio':>8}")
    for label in small:
        times = [median_ms(lambda: [func(prompts=None, completions=[corpus[label]], answer=["5"])
                                    for func in rewards.DEFAULT_REWARDS], 3) for corpus in (small, large)]
        print(f"{label:<32}{times[0]:>10.2f}{times[1]:>10.2f}{times[1] / max(times[0], 1e-3):>8.1f}")

    if args.math_verify:
        import logging

        import math_verify

        # Its timeout warning prints the whole input: 200 KB per line.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        texts = [rewards.extract_xml_answer(c) or "" for c in completions]
        math_verify.parse("1")  # warm-up: the first call imports sympy and builds the grammars
        start = time.perf_counter()
        for text in texts:
            math_verify.parse(text)
        per_answer = (time.perf_counter() - start) * 1000 / len(texts)
        start = time.perf_counter()
        for text in texts:
            answers.read_answer(text)
        ours = (time.perf_counter() - start) * 1000 / len(texts)
        print(f"\nmath_verify.parse: {per_answer:.3f} ms per realistic answer (read_answer: {ours:.4f} ms, "
              f"{per_answer / ours:.0f}x faster)")
        short_bomb = "$" + "(" * 60 + "1" + ")" * 60 + "$"  # 122 characters
        for label, answer in [*((k, rewards.extract_xml_answer(small[k]) or "") for k in
                                ["closed answer of many numbers", "one huge number in <answer>"]),
                              ("60 nested parentheses (122 chars)", short_bomb)]:
            start = time.perf_counter()
            math_verify.parse(answer)  # its default timeout: 5 s, by SIGALRM
            print(f"math_verify.parse on {label!r}: {(time.perf_counter() - start) * 1000:.0f} ms "
                  f"(read_answer: {median_ms(lambda: answers.read_answer(answer), 3):.3f} ms)")


if __name__ == "__main__":
    main()
