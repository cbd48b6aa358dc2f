"""The command line's arguments: parsing, the profile fields as NAME=VALUE, and the checks made before anything runs.

`python -m grpo_helpers train|evaluate|vllm-serve` (grpo_helpers.commands runs them). Bad input is one
line on stderr, exit status 2, and nothing written. This module imports nothing heavy: for Unsloth's
backend, Unsloth must be imported before transformers (it patches it), so the commands come after.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
import types
import typing
from typing import Any, NoReturn, Sequence

from . import backends, modeling, runtime
from .profiles import PROFILES, Profile, ProfileError, get_profile

PROG = "python -m grpo_helpers"
USAGE_EXIT = 2  # bad input: nothing was written
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
# Fields whose values are names from a fixed set (backend and vllm_mode: backends.check_engine).
FIELD_CHOICES: dict[str, tuple[object, ...]] = {
    "use_gradient_checkpointing": (True, False, "unsloth"),
    "dtype": ("float16", "bfloat16", "float32"),
    "loss_type": ("grpo", "dapo", "dr_grpo", "bnpo"),  # TRL 0.22.2's GRPOConfig.loss_type
    "scale_rewards": ("group", "batch", "none"),  # TRL 0.22.2's GRPOConfig.scale_rewards
}


class UsageError(ValueError):
    """Command-line input that cannot run here; the message names the valid choices."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message (see --help)` and exit with status 2."""
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see --help)\n")


# --- profile fields on the command line ---------------------------------------------------------------

def profile_field_docs() -> list[tuple[str, str, str]]:
    """(field, type, what it does) for every Profile field, read from the comment where it is declared."""
    rows: list[list[str]] = []
    for line in inspect.getsource(Profile).splitlines():
        field = re.match(r" {4}(\w+): ([^#=]+?)\s+# ?(.*)$", line)
        if field:
            rows.append([field[1], field[2], field[3]])
        elif rows and re.match(r" {4}# {3}\S", line):  # a comment's continuation line
            rows[-1][2] += " " + line.strip()[1:].strip()
    return [(name, kind, text) for name, kind, text in rows]


def fields_epilog(width: int = 100) -> str:
    """The profiles and every Profile field with its type and meaning, for --help."""
    lines = ["profiles (--profile NAME; default: $GRPO_PROFILE, else t4 with a CUDA GPU, else tiny):"]
    lines += [f"  {name:<12} {profile.description}" for name, profile in PROFILES.items()]
    lines += ["", "profile fields (--set NAME=VALUE, repeatable; booleans true/false, tuples comma-separated, "
              "none for None):"]
    for name, kind, text in profile_field_docs():
        lines += textwrap.wrap(f"{name} ({kind}): {text}", width, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def _convert(kind: Any, text: str) -> Any:
    """`text` as one type of a field's annotation; ValueError when it is not one."""
    if kind is type(None):
        if text.lower() in ("none", "null"):
            return None
    elif kind is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
    elif kind in (int, float):
        return kind(text)
    elif kind is str:
        return text
    elif typing.get_origin(kind) is tuple:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        if items:
            return items
    raise ValueError(text)


def _type_words(kind: Any) -> str:
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "none"}
    return " or ".join(words.get(k, "comma-separated names") for k in _options(kind))


def _options(kind: Any) -> list[Any]:
    """The types a field accepts, tried in this order: None, bool, numbers, tuples, then text."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    order = {type(None): 0, bool: 1, int: 2, float: 3, str: 5}
    return sorted(typing.get_args(kind) if union else [kind], key=lambda k: order.get(k, 4))


def parse_setting(item: str) -> tuple[str, Any]:
    """`NAME=VALUE` as (field, typed value); a ProfileError for an unknown field or a value of the wrong type."""
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"--set takes NAME=VALUE, not {item!r}; the names are the profile fields listed by --help")
    hints = typing.get_type_hints(Profile)
    if name not in hints:
        PROFILES["tiny"].replace(**{name: text})  # raises the ProfileError that lists every valid name
    for kind in _options(hints[name]):
        try:
            value = _convert(kind, text.strip())
        except ValueError:
            continue
        if value not in FIELD_CHOICES.get(name, (value,)):
            valid = ", ".join(str(choice).lower() if isinstance(choice, bool) else choice
                              for choice in FIELD_CHOICES[name])
            raise ProfileError(f"--set {name}={text!r}: valid values of {name} are {valid}.")
        return name, value
    raise ProfileError(f"--set {name}={text!r}: {name} takes {_type_words(hints[name])}, not {text!r}.")


# --- arguments -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The parser: train, evaluate and vllm-serve, each with --profile and --set."""
    epilog = fields_epilog()
    parser = OneLineParser(prog=PROG, description="GRPO training and evaluation, as notebooks 04 and 05 run them.",
                           epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    helps = {"train": "GRPO training, as notebook 04 (one process, or several under accelerate launch)",
             "evaluate": "notebook 05's before/after: GSM8K and the pi prompts, results files and card",
             "vllm-serve": "start TRL's vLLM server for a profile with vllm_mode=server (trl vllm-serve)"}
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--profile", choices=sorted(PROFILES), help="the profile (default: $GRPO_PROFILE or "
                         "the hardware)")
        sub.add_argument("--set", dest="settings", action="append", nargs="+", default=[], metavar="NAME=VALUE",
                         help="change profile fields (listed below)")
        if name == "train":
            sub.add_argument("--max-steps", type=int, help="GRPO steps (default: the profile's max_steps)")
            sub.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                             help="continue this run from its newest checkpoint (--no-resume: set the old run aside)")
            sub.add_argument("--preflight", action=argparse.BooleanOptionalAction, default=True,
                             help="measure preflight_steps real steps first and stop if the run will not fit")
            sub.add_argument("--redraw-every-s", type=float, default=15.0, help="how often the curves PNG redraws")
        elif name == "evaluate":
            sub.add_argument("--adapter-dir", help="the adapter to evaluate (default: <artifacts>/<profile>/lora_adapter)")
            sub.add_argument("--questions", type=int, help="GSM8K test questions (default: the profile's)")
            sub.add_argument("--pi-samples", type=int, help="samples per pi prompt and model (default: the profile's)")
        else:
            sub.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    return parser


def resolve_profile(args: argparse.Namespace) -> Profile:
    """The profile with --set and --max-steps applied, checked for this machine and launch; writes nothing."""
    profile = get_profile(args.profile, check_hardware=False, quiet=True)
    changes = dict(parse_setting(item) for group in args.settings for item in group)
    if getattr(args, "max_steps", None) is not None:
        if args.max_steps < 1:
            raise UsageError(f"--max-steps takes a step count of 1 or more, not {args.max_steps}")
        changes["max_steps"] = args.max_steps
    for option in ("questions", "pi_samples"):
        if getattr(args, option, None) is not None and getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} takes 1 or more, not {getattr(args, option)}")
    profile = profile.replace(**changes)
    backends.check_engine(profile)
    if profile.requires_gpu and not getattr(args, "dry_run", False) and not runtime.cuda_available():
        cpu = ", ".join(n for n, p in PROFILES.items() if not p.requires_gpu)
        raise UsageError(f"profile {profile.name!r} needs a CUDA GPU and this machine has none; profiles that "
                         f"run on CPU: {cpu} (--profile {cpu.split(', ')[0]})")
    if backends.single_process_from_multi_process_launch():
        raise UsageError("accelerate launch --cpu started ONE process although --num_processes asked for more "
                         "(accelerate 1.10.1 starts several CPU processes only through MPI). Use "
                         f"{backends.CPU_LAUNCH_FIX}, or drop --num_processes for one process")
    if backends.world_size() > 1 and args.command != "train":
        raise UsageError(f"{args.command} runs in one process: {PROG} {args.command} ..., not under accelerate launch")
    if args.command == "vllm-serve" and profile.vllm_mode != "server":
        raise UsageError(f"profile {profile.name!r} has vllm_mode={profile.vllm_mode!r}: vllm-serve is for "
                         "vllm_mode=server (--profile kaggle_2xt4, or --set backend=trl vllm_mode=server)")
    return profile


def fail(command: str, exc: BaseException | str, status: int) -> int:
    """Print `prog command: error: message` as one line on stderr; return `status`."""
    print(f"{PROG} {command}: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
    return status


def parse_or_exit(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Profile]:
    """(arguments, profile), or SystemExit(2) after one line on stderr: nothing has been written either way."""
    args = build_parser().parse_args(argv)
    try:
        return args, resolve_profile(args)
    except (ProfileError, UsageError) as exc:
        raise SystemExit(fail(args.command, exc, USAGE_EXIT)) from None


def prepare_engine(args: argparse.Namespace, profile: Profile) -> None:
    """Import Unsloth now for a command that loads a model with its backend: before anything imports transformers."""
    if args.command in ("train", "evaluate") and backends.backend_for(profile) == "unsloth":
        modeling.import_unsloth(profile)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and check (bad input: one line, status 2, nothing written), import Unsloth when its backend trains,
    then run the command; what `python -m grpo_helpers` does."""
    try:
        args, profile = parse_or_exit(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    prepare_engine(args, profile)
    from .commands import run  # after Unsloth: commands imports transformers and TRL, which Unsloth patches

    return run(args, profile)
