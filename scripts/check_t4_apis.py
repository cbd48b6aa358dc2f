#!/usr/bin/env python3
"""Check every Unsloth/vLLM/TRL/PEFT/transformers call of the t4 path against the pinned Colab T4 stack.

Run by scripts/check_t4_apis.sh with the python of a venv that holds exactly the T4 install plan
(`--check`); the calls to check are read off grpo_helpers' own source with ast, so a new keyword
there is checked without editing this file. `--digest`, `--steps` and `--if-unchanged` need only
the standard library (any python, PYTHONPATH=<repo>).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "tests" / "t4_api_check.json"
T4_COMPUTE_CAPABILITY = (7, 5)
# grpo_helpers' t4 path: these modules and those they import at module level, but for NOT_T4_PATH.
T4_MODULES = ("modeling", "generation", "training", "export", "evaluation")
NOT_T4_PATH = {"tiny": "builds the CPU model", "objective": "its stack calls are the CPU TRL probes (notebooks 02, 03)",
               "backends": "the 'trl' backend (accelerate, several GPUs); the t4 profile trains with Unsloth"}
API_PACKAGES = ("unsloth", "vllm", "trl", "peft", "transformers", "torch")  # calls into these are checked
RECEIVERS = ("model", "tokenizer", "trainer")  # `<name>.<method>(...)` on these objects is checked via METHODS
# `**expr` arguments the parser cannot see into: the grpo_helpers function whose returned dict literal they are.
KEYWORD_SOURCES = {"trl.GRPOConfig": "grpo_config_values"}
NOT_CHECKED = {"model.generate": "the HF-generate path: not taken with fast_inference (CPU CI runs it)"}
KEY_PACKAGES = ("torch", "vllm", "unsloth", "unsloth-zoo", "transformers", "trl", "peft", "accelerate",
                "datasets", "bitsandbytes", "cut-cross-entropy", "torchao", "triton", "xformers")
NO_GPU_ERRORS = ("libcuda", "cuda driver", "no gpu", "nvidia driver", "accelerator", "cuda is not available")


@dataclass(frozen=True)
class Method:
    """A method our code calls on a model/tokenizer/trainer: the function it runs, and where Unsloth attaches it."""

    target: str  # dotted path; its first parameter (self, or the model Unsloth binds) is bound
    attached: tuple[tuple[str, str], ...] = ()  # (installed file, right-hand side of `model.<name> = ...` there)


METHODS = {
    "model.fast_generate": Method("vllm.LLM.generate", (("unsloth/models/llama.py", "model.vllm_engine.generate"),
                                                        ("unsloth/models/_utils.py", "model.model.fast_generate"))),
    "model.load_lora": Method("unsloth_zoo.vllm_utils.load_lora",
                              (("unsloth/models/_utils.py", "functools.partial(load_lora, model)"),)),
    "model.save_lora": Method("unsloth_zoo.vllm_utils.save_lora",
                              (("unsloth/models/_utils.py", "functools.partial(save_lora, model)"),)),
    "model.save_pretrained_merged": Method(
        "unsloth.save.unsloth_generic_save_pretrained_merged",
        (("unsloth/save.py",
          "_bind_saving_method(unsloth_generic_save_pretrained_merged, model, 'save_pretrained_merged')"),)),
    "model.save_pretrained_gguf": Method(
        "unsloth.save.unsloth_save_pretrained_gguf",
        (("unsloth/save.py", "_bind_saving_method(unsloth_save_pretrained_gguf, model, 'save_pretrained_gguf')"),)),
    "model.save_pretrained": Method(  # Unsloth's wrapper forwards (*args, **kwargs) to PEFT's
        "peft.PeftModel.save_pretrained",
        (("unsloth/save.py", "_bind_saving_method(unsloth_model_save_pretrained, model, 'save_pretrained')"),)),
    "model.disable_adapter": Method("peft.PeftModel.disable_adapter"),
    "model.get_memory_footprint": Method("transformers.PreTrainedModel.get_memory_footprint"),
    "model.parameters": Method("torch.nn.Module.parameters"),
    "model.modules": Method("torch.nn.Module.modules"),
    "model.eval": Method("torch.nn.Module.eval"),
    "model.train": Method("torch.nn.Module.train"),
    "tokenizer.apply_chat_template": Method("transformers.PreTrainedTokenizerBase.apply_chat_template"),
    "tokenizer.save_pretrained": Method(
        "unsloth.save.unsloth_tokenizer_save_pretrained",
        (("unsloth/save.py", "_bind_saving_method(unsloth_tokenizer_save_pretrained, model, 'save_pretrained')"),)),
    "tokenizer.decode": Method("transformers.PreTrainedTokenizerBase.decode"),
    "tokenizer.convert_ids_to_tokens": Method("transformers.PreTrainedTokenizerFast.convert_ids_to_tokens"),
    "tokenizer.convert_tokens_to_ids": Method("transformers.PreTrainedTokenizerFast.convert_tokens_to_ids"),
    "trainer.train": Method("trl.GRPOTrainer.train"),
}
# Attributes our code reads (getattr defaults would hide a rename), and the model attribute Unsloth sets.
ATTRIBUTES = {
    "trl.GRPOConfig": ("temperature", "top_p", "top_k", "reward_weights", "max_steps", "output_dir"),
    "trl.GRPOTrainer": ("reward_funcs", "args", "state", "model"),
    "vllm.outputs.RequestOutput": ("outputs",),
    "vllm.outputs.CompletionOutput": ("text", "token_ids", "finish_reason"),
}
MODEL_ATTRIBUTES = {"vllm_engine": (("unsloth/models/llama.py", "llm"),
                                     ("unsloth/models/_utils.py", "model.model.vllm_engine"))}
# Environment variables Unsloth must read: these, and every "UNSLOTH_..." string in grpo_helpers.
ENVIRONMENT = ("UNSLOTH_VLLM_STANDBY",)
ENVIRONMENT_READERS = ("unsloth", "unsloth_zoo")
# Names our code relies on without importing them: what load_lora returns, the 4-bit classes matched by name.
EXTRA_IMPORTS = ("vllm.lora.request.LoRARequest", "bitsandbytes.nn.Params4bit", "bitsandbytes.nn.Linear4bit")


# --- the plan and what our code calls (standard library only) -------------------------------------

def t4_steps() -> list[list[str]]:
    """The uv arguments of each step of the Colab T4 install plan (kit "full", nothing installed yet)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from grpo_helpers.install import colab_install_plan

    return [step.uv_args() for step in colab_install_plan(T4_COMPUTE_CAPABILITY, "full", installed={})]


def t4_digest() -> str:
    """The T4 plan's digest (install.plan_digest): the key of the API record."""
    from grpo_helpers.install import colab_install_plan, plan_digest

    return plan_digest(colab_install_plan(T4_COMPUTE_CAPABILITY, "full", installed={}))


@dataclass(frozen=True)
class Use:
    """One external call in grpo_helpers: target, positional arguments, keyword names, where."""

    target: str
    positional: int
    keywords: tuple[str, ...]
    where: tuple[str, ...]


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _dict_keys(node: ast.expr | None) -> set[str] | None:
    if not isinstance(node, ast.Dict) or not all(isinstance(k, ast.Constant) for k in node.keys):
        return None
    return {k.value for k in node.keys if isinstance(k, ast.Constant)}


def _returned_keys(tree: ast.Module, function: str) -> set[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and _dict_keys(ret.value) is not None:
                    return _dict_keys(ret.value) or set()
    raise LookupError(f"no `return {{...}}` in {function}()")


def _splat_keys(target: str, value: ast.expr, scope: ast.AST, tree: ast.Module, where: str) -> set[str]:
    """The keys a `**value` argument can carry: dict literals assigned to that name in the scope."""
    if isinstance(value, ast.Name):
        keys = set()
        for node in ast.walk(scope):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                names = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(n, ast.Name) and n.id == value.id for n in names):
                    keys |= _dict_keys(node.value) or set()
        if keys:
            return keys
    if target in KEYWORD_SOURCES:
        return _returned_keys(tree, KEYWORD_SOURCES[target])
    raise LookupError(f"{where}: cannot see which keywords `**{ast.unparse(value)}` passes to {target}; "
                      "add its source to KEYWORD_SOURCES in scripts/check_t4_apis.py")


def _module_uses(path: Path, root: Path) -> list[Use]:
    tree = ast.parse(path.read_text(), str(path))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                            for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    uses, seen = [], set()
    for scope in (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))):
        for call in (n for n in ast.walk(scope) if isinstance(n, ast.Call) and id(n) not in seen):
            seen.add(id(call))
            func = call.func
            target = _dotted(func, aliases)
            receiver = getattr(func, "value", None)
            receiver = getattr(receiver, "id", None) or getattr(receiver, "attr", None)  # model, self.model
            if target is None and isinstance(func, ast.Attribute) and receiver in RECEIVERS:
                target = f"{receiver}.{func.attr}"
            elif target is None or target.split(".")[0] not in API_PACKAGES:
                continue
            where = f"{path.relative_to(root)}:{call.lineno}"
            keywords = set()
            for kw in call.keywords if target not in NOT_CHECKED else ():
                keywords |= {kw.arg} if kw.arg else _splat_keys(target, kw.value, scope, tree, where)
            uses.append(Use(target, len(call.args), tuple(sorted(keywords)), (where,)))
    return uses


def t4_paths(root: Path = REPO) -> list[Path]:
    """The t4 modules' files, with the grpo_helpers modules they import at module level (transitively)."""
    todo, found = list(T4_MODULES), {}
    while todo:
        path = root / "grpo_helpers" / f"{todo.pop()}.py"
        if path.stem in NOT_T4_PATH or path in found or not path.is_file():  # `from . import __version__`
            continue
        found[path] = None
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                todo += [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
    return sorted(found)


def derive_uses(root: Path = REPO) -> list[Use]:
    """Every call of the t4 path into the API packages or on a model/tokenizer/trainer, merged per target."""
    merged: dict[str, Use] = {}
    for path in t4_paths(root):
        for use in _module_uses(path, root):
            old = merged.get(use.target)
            if old:
                use = Use(use.target, max(old.positional, use.positional),
                          tuple(sorted({*old.keywords, *use.keywords})), (*old.where, *use.where))
            merged[use.target] = use
    return [merged[t] for t in sorted(merged)]


def environment_variables(root: Path = REPO) -> dict[str, list[str]]:
    """ENVIRONMENT plus every "UNSLOTH_..." string constant in grpo_helpers -> where it appears."""
    found: dict[str, list[str]] = {name: ["scripts/check_t4_apis.py"] for name in ENVIRONMENT}
    for path in sorted((root / "grpo_helpers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"UNSLOTH_[A-Z0-9_]+", node.value):
                found.setdefault(node.value, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def uses_digest(uses: list[Use], variables: dict[str, list[str]]) -> str:
    """sha256 of what our code calls (targets, positional counts, keywords; not where) and the variables it sets."""
    calls = [[u.target, u.positional, u.keywords] for u in uses]
    return hashlib.sha256(json.dumps([calls, sorted(variables)]).encode()).hexdigest()


def imported_modules(root: Path = REPO) -> dict[str, list[str]]:
    """Third-party `module[.name]` the t4 modules (and the grpo_helpers modules they import) import -> where."""
    todo, seen, found = list(T4_MODULES), set(), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = root / "grpo_helpers" / f"{name}.py"
        if not path.is_file():  # `from . import __version__`
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                todo += [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for full in names:
                if full.split(".")[0] not in (*sys.stdlib_module_names, "__future__"):
                    found.setdefault(full, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return dict(sorted(found.items()))


def read_record(path: Path = RECORD) -> dict[str, Any]:
    """The last check's record ({} when there is none)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def unchanged_since_record() -> bool:
    """True (saying so in one line) when the record matches today's plan and calls and has no failures."""
    record = read_record()
    if not record:
        print(f"T4 API check: no record at {RECORD.relative_to(REPO)} yet.")
        return False
    reasons = [why for why, stale in (
        ("the install plan changed", record.get("plan_digest") != t4_digest()),
        ("grpo_helpers' external calls changed",
         record.get("uses_digest") != uses_digest(derive_uses(), environment_variables())),
        ("it recorded failures", bool(record.get("failures")))) if stale]
    if reasons:
        print(f"T4 API check: {' and '.join(reasons)} since the last check ({record.get('checked_on')}).")
        return False
    print(f"T4 API check: pins unchanged since {record['checked_on']}, {len(record['verified'])} calls verified.")
    return True


# --- checking against the installed stack ---------------------------------------------------------

@dataclass(frozen=True)
class Params:
    """What a callable accepts: keyword names, how many positionals (None: *args), **kwargs, where it is defined."""

    names: tuple[str, ...]
    positional: int | None
    var_keyword: bool
    where: str
    how: str  # "signature" (imported, inspect) or "source" (ast on the installed file)

    def bind_first(self) -> Params:
        """The same callable with its first parameter (self, or the model Unsloth binds) taken."""
        return dataclasses.replace(self, names=self.names[1:],
                                   positional=None if self.positional is None else self.positional - 1)

    def forwards(self, bound: bool) -> bool:
        """True for `([self, ]*args, **kwargs)`: a wrapper that hides the real parameters."""
        return self.positional is None and self.var_keyword and len(self.names) <= int(bound)


class NoGPU(Exception):
    """An import that failed only because this machine has no GPU / CUDA driver."""


def site_relative(path: str | Path | None) -> str:
    """A path inside site-packages as `package/file.py` (other paths: the file name)."""
    path = str(path or "?")
    return path.split("site-packages/")[-1] if "site-packages/" in path else Path(path).name


def package_file(relative: str) -> Path:
    """An installed file named as `package/path/file.py`, found without importing the package."""
    top, *rest = relative.split("/")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise LookupError(f"{top} is not installed")
    return Path(spec.origin).parent.joinpath(*rest)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep the stack's import banners out of the report."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@functools.cache
def installed(dotted: str) -> bool:
    """Whether the module part of `dotted` is installed at all (cached: unsloth later hides vLLM)."""
    parts = dotted.split(".")
    spec = importlib.util.find_spec(parts[0])
    if spec and spec.origin is None and len(parts) > 1:  # a namespace package (google): look one deeper
        spec = importlib.util.find_spec(".".join(parts[:2]))
    return spec is not None


@functools.cache
def resolve(dotted: str) -> Any:
    """Import the longest importable module prefix of `dotted` and get the rest as attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            with quiet():
                obj = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if i > 1 and error.name and module.startswith(error.name):
                continue
            raise
        except Exception as error:
            if any(s in str(error).lower() for s in NO_GPU_ERRORS):
                raise NoGPU(f"{type(error).__name__}: {error}") from error
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def gpu_dotted(dotted: str) -> tuple[str, str]:
    """Where a T4 gets `unsloth.<Name>` from when this machine's unsloth chose its CPU backend, and why."""
    top, _, name = dotted.partition(".")
    if top != "unsloth" or not name or not getattr(resolve("unsloth"), "_IS_CPU_BACKEND", False):
        return dotted, ""
    head = name.split(".")[0]
    init = package_file("unsloth/_gpu_init.py")
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module \
                and any(a.name in (head, "*") for a in node.names) and hasattr(resolve(f"unsloth.{node.module}"), head):
            return f"unsloth.{node.module}.{name}", f"the GPU build's, via unsloth/_gpu_init.py:{node.lineno}"
    return dotted, ""


def _args_params(args: ast.arguments, where: str) -> Params:
    positional = len(args.posonlyargs) + len(args.args)
    names = tuple(a.arg for a in (*args.args, *args.kwonlyargs))
    return Params(names, None if args.vararg else positional, args.kwarg is not None, where, "source")


def source_params(file: Path, qualname: list[str], depth: int = 0) -> Params | None:
    """Params of `Class.method` / `function` / `Class` (its __init__) in a source file, following re-exports."""
    tree = ast.parse(file.read_text())
    node: ast.AST | None = tree
    for part in qualname:
        definitions = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        node = next((n for n in getattr(node, "body", []) if isinstance(n, definitions) and n.name == part), None)
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init:
            return _args_params(init.args, f"{site_relative(file)}:{init.lineno}").bind_first()
        fields = tuple(n.target.id for n in node.body
                       if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
        return Params(fields, len(fields), False, f"{site_relative(file)}:{node.lineno}", "source")  # dataclass/struct
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return _args_params(node.args, f"{site_relative(file)}:{node.lineno}")
    for imp in (n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module):
        if depth < 6 and any(a.name in (qualname[0], "*") for a in imp.names):
            base = file.parent.joinpath(*imp.module.split("."))
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                found = candidate.is_file() and source_params(candidate, qualname, depth + 1)
                if found:
                    return found
    return None


def static_params(dotted: str) -> Params:
    """Params from the installed source alone (importing it needs a GPU): along the path, else where it is defined."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        base = package_file("/".join(parts[:i]))
        for file in (base.with_suffix(".py"), base / "__init__.py"):
            found = file.is_file() and source_params(file, parts[i:])
            if found:
                return found
    for i in range(len(parts) - 1, 0, -1):
        pattern = re.compile(rf"^(class|def) {parts[i]}\b", re.MULTILINE)
        for file in sorted(package_file(parts[0]).rglob("*.py")):
            found = pattern.search(file.read_text(errors="replace")) and source_params(file, parts[i:])
            if found:
                return found
    raise LookupError(f"no definition of {dotted} in the installed source")


def where_defined(obj: Any) -> str:
    """`package/file.py:line` of a function or class."""
    try:
        target = inspect.unwrap(obj)
        return f"{site_relative(inspect.getsourcefile(target))}:{inspect.getsourcelines(target)[1]}"
    except (TypeError, OSError):
        return "?"


def params_of(obj: Any, owner: type | None = None, name: str = "") -> Params:
    """Params of a class (constructor) or function (`owner.name`) by inspect; from source where a wrapper hides them."""
    kind = inspect.Parameter
    parameters = inspect.signature(obj).parameters.values()
    found = Params(tuple(p.name for p in parameters if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)),
                   None if any(p.kind == kind.VAR_POSITIONAL for p in parameters) else
                   sum(p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD) for p in parameters),
                   any(p.kind == kind.VAR_KEYWORD for p in parameters), where_defined(obj), "signature")
    is_class = inspect.isclass(obj)
    if not found.forwards(bound=not is_class):
        return found
    # A wrapper without __wrapped__ (Unsloth's around GRPOTrainer.__init__ and .train): the classes' own source.
    attr = "__init__" if is_class else name
    for klass in obj.__mro__ if is_class else owner.__mro__ if owner else ():
        with contextlib.suppress(TypeError, OSError):
            file = attr in vars(klass) and inspect.getsourcefile(klass)
            own = file and source_params(Path(file), [*klass.__qualname__.split("."), attr])
            if own and not own.forwards(bound=True):
                return own.bind_first() if is_class else own
    return found


class Checker:
    """Runs the checks, printing `OK ...` / `FAIL ...`, and keeps what the record needs."""

    def __init__(self) -> None:
        self.verified: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.no_gpu: list[str] = []

    def ok(self, call: str, how: str, api: str, uses: tuple[str, ...] = (), where: tuple[str, ...] = ()) -> None:
        """Record and print one verified call."""
        self.verified.append({"call": call, "uses": list(uses), "how": how, "api": api, "where": list(where)})
        print(f"OK {call}{'(' + ', '.join(uses) + ')' if uses else ''} [{how}: {api}]")

    def fail(self, call: str, why: str) -> None:
        """Record and print one failure."""
        self.failures.append(f"{call}: {why}")
        print(f"FAIL {call}: {why}")

    def params(self, call: str, dotted: str) -> tuple[Any, Params] | None:
        """(object or None, Params) of `dotted` as a T4 gets it; read statically where the import needs a GPU."""
        try:
            real, why = gpu_dotted(dotted)
            if why:
                print(f"   ({dotted} is {real}, {why}: this GPU-less machine's unsloth chose its CPU backend)")
            obj = resolve(real)
            owner = resolve(real.rsplit(".", 1)[0])  # the class of a method (primed with it)
            return obj, params_of(obj, owner if inspect.isclass(owner) else None, real.rsplit(".", 1)[-1])
        except NoGPU as error:
            self.no_gpu.append(f"{dotted}: {error}")
            print(f"   ({dotted}: importing it needs a GPU ({str(error)[:120]}); reading the installed source)")
            try:
                return None, static_params(dotted)
            except LookupError as missing:
                self.fail(call, str(missing))
        except Exception as error:  # a removed/renamed API, or a module that should import on CPU
            self.fail(call, f"cannot import {dotted}: {type(error).__name__}: {str(error)[:300]}")
        return None

    def check_use(self, use: Use) -> None:
        """One call of ours against the API it reaches."""
        if use.target in NOT_CHECKED:
            print(f"SKIP {use.target}: {NOT_CHECKED[use.target]}")
            return
        method = METHODS.get(use.target)
        if use.target.split(".")[0] in RECEIVERS and method is None:
            self.fail(use.target, f"called at {', '.join(use.where)} but not mapped: add it to METHODS in "
                                  "scripts/check_t4_apis.py")
            return
        dotted = method.target if method else use.target
        for file, rhs in method.attached if method else ():
            self.check_attached(use.target, file, rhs)
        got = self.params(use.target, dotted)
        if got is None:
            return
        obj, params = got
        params = params.bind_first() if method else params
        failures = len(self.failures)
        for keyword in (k for k in use.keywords if k not in params.names):  # **kwargs would hide a rename
            self.fail(use.target, f"no keyword {keyword!r} (passed at {', '.join(use.where)}; {dotted} at "
                                  f"{params.where}{' takes it only into **kwargs' if params.var_keyword else ''})")
        if params.positional is not None and use.positional > params.positional:
            self.fail(use.target, f"takes {params.positional} positional arguments, {', '.join(use.where)} passes "
                                  f"{use.positional}")
        if dataclasses.is_dataclass(obj):  # build_grpo_config drops what is not a field: each must be one
            fields = {f.name for f in dataclasses.fields(obj)}
            for keyword in (k for k in use.keywords if k not in fields):
                self.fail(use.target, f"{keyword!r} is not a field of {dotted} (build_grpo_config would drop it)")
        if len(self.failures) == failures:
            shown = [f"{use.positional} positional"] if use.positional else []
            api = f"{dotted} at {params.where}" if dotted != use.target else params.where
            self.ok(use.target, params.how, api, (*shown, *use.keywords), use.where)

    def check_attached(self, attribute: str, file: str, rhs: str) -> None:
        """That Unsloth's source still sets `<object>.<name> = <rhs>` in `file` (attribute: "model.<name>")."""
        call = f"unsloth sets {attribute} = {rhs}"
        name = attribute.rsplit(".", 1)[1]
        expected = ast.unparse(ast.parse(rhs, mode="eval").body)
        found = [node.lineno for node in ast.walk(ast.parse(package_file(file).read_text()))
                 if isinstance(node, ast.Assign) and ast.unparse(node.value) == expected
                 and any(isinstance(t, ast.Attribute) and t.attr == name for t in node.targets)]
        if found:
            self.ok(call, "source", f"{file}:{found[0]}")
        else:
            self.fail(call, f"{file} no longer sets .{name} = {rhs}")

    def check_import(self, dotted: str, where: list[str]) -> None:
        """A module or name our code imports: importable here, or not in the T4 set at all (Colab's own)."""
        if not installed(dotted):
            print(f"SKIP import {dotted}: not in the T4 install plan (Colab's image provides it)")
            return
        try:
            real, _ = gpu_dotted(dotted)
            resolve(real)
            self.ok(f"import {dotted}", "import", f"{real} imported" if real != dotted else "imported",
                    where=tuple(where))
        except NoGPU as error:
            self.no_gpu.append(f"import {dotted}: {error}")
            print(f"   (import {dotted} needs a GPU here: {error}; its calls are checked on the source)")
        except Exception as error:  # whatever breaks the import is the finding
            self.fail(f"import {dotted}", f"{type(error).__name__}: {str(error)[:300]}")

    def check_attributes(self, dotted: str, names: tuple[str, ...]) -> None:
        """Attributes our code reads off instances of `dotted`: fields, class attributes or `self.<name> =`."""
        got = self.params(dotted, dotted)
        if got is None or got[0] is None:
            return
        klass = got[0]
        known = {f.name for f in dataclasses.fields(klass)} if dataclasses.is_dataclass(klass) else set()
        known |= set(getattr(klass, "__struct_fields__", ()))
        sources = []
        for base in klass.__mro__[:-1]:
            with contextlib.suppress(TypeError, OSError):
                sources.append(inspect.getsource(base))
        missing = [n for n in names if n not in known and not hasattr(klass, n)
                   and not re.search(rf"self\.{n}\s*[:=]", "".join(sources))]
        if missing:
            self.fail(dotted, f"no attribute {', '.join(map(repr, missing))}")
        else:
            self.ok(f"{dotted} attributes", "signature", f"{where_defined(klass)} (fields, or self.<name> = in its "
                                                         "classes' source)", names)

    def check_environment(self, variable: str, where: list[str]) -> None:
        """Where Unsloth reads an environment variable: os.environ.get / os.getenv / os.environ[...] / in os.environ."""
        reads = []
        for package in ENVIRONMENT_READERS:
            for file in sorted(package_file(package).rglob("*.py")):
                text = file.read_text(errors="replace")
                if variable in text:
                    reads += [f"{site_relative(file)}:{node.lineno}" for node in ast.walk(ast.parse(text))
                              if reads_variable(node, variable)]
        if reads:
            self.ok(f"${variable}", "source", f"read at {', '.join(reads[:5])}{', ...' if len(reads) > 5 else ''} "
                                              f"({len(reads)} reads)", where=tuple(where))
        else:
            self.fail(f"${variable}", f"named at {', '.join(where)}, but {' and '.join(ENVIRONMENT_READERS)} "
                                      "never read it")


def reads_variable(node: ast.AST, variable: str) -> bool:
    """True when `node` reads `variable` from os.environ (get, getenv, subscript, `in`)."""
    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv") and node.args:
        key = node.args[0]
    elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and ast.unparse(node.value) == "os.environ":
        key = node.slice
    elif isinstance(node, ast.Compare) and [ast.unparse(c) for c in node.comparators] == ["os.environ"]:
        key = node.left
    else:
        return False
    return isinstance(key, ast.Constant) and key.value == variable


def import_order(dotted: str) -> tuple[int, str]:
    """Sort key: vLLM, then unsloth (which patches TRL, as our import_unsloth() does first), then the rest."""
    # vLLM first: once unsloth finds vLLM's CUDA extension unloadable (no GPU) it blocks vLLM imports.
    return (0 if dotted.startswith("vllm") else 1 if dotted.startswith("unsloth") else 2), dotted


def prime(names: set[str], no_gpu: list[str]) -> None:
    """Import everything in a T4-like order, noting what this GPU-less machine cannot load."""
    vllm_modules: dict[str, Any] = {}
    for dotted in sorted(names | {n.rsplit(".", 1)[0] for n in names}, key=import_order):
        if not dotted.startswith("vllm") and not vllm_modules:
            vllm_modules = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "vllm"}
            try:
                importlib.import_module("vllm._C")
            except ImportError as error:
                no_gpu.append(f"vllm._C (vLLM's CUDA kernels) does not load: {error}. So unsloth disables vLLM "
                              "here; vLLM's Python API was imported and checked before that.")
        installed(dotted)
        with contextlib.suppress(Exception):  # the checks report import errors
            resolve(gpu_dotted(dotted)[0])
    for name, module in vllm_modules.items():  # inspect finds a class's file through sys.modules
        sys.modules.setdefault(name, module)
    if getattr(sys.modules.get("unsloth"), "_IS_CPU_BACKEND", False):
        no_gpu.append("unsloth chose its CPU backend, so unsloth.<Name> is read where unsloth/_gpu_init.py takes "
                      "it from on a GPU (unsloth.models.*)")


def run_check(record_path: Path = RECORD) -> int:
    """Check in a scratch directory (Unsloth writes its compiled cache to the cwd); the exit status."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    with tempfile.TemporaryDirectory(prefix="t4-api-check-") as scratch:
        os.chdir(scratch)
        try:
            return check_and_record(record_path)
        finally:
            os.chdir(REPO)


def check_and_record(record_path: Path) -> int:
    """Check everything, write the record, return the exit status (1 on any failure)."""
    steps, uses, imports, checker = t4_steps(), derive_uses(), imported_modules(), Checker()
    variables = environment_variables()
    targets = [METHODS[u.target].target if u.target in METHODS else u.target for u in uses]
    prime({*EXTRA_IMPORTS, *imports, *targets, *ATTRIBUTES}, checker.no_gpu)
    for dotted in EXTRA_IMPORTS:
        checker.check_import(dotted, [])
    for dotted, where in imports.items():
        checker.check_import(dotted, where)
    for use in uses:
        checker.check_use(use)
    for dotted, names in ATTRIBUTES.items():
        checker.check_attributes(dotted, names)
    for name, attached in MODEL_ATTRIBUTES.items():
        for file, rhs in attached:
            checker.check_attached(f"model.{name}", file, rhs)
    for variable, where in variables.items():
        checker.check_environment(variable, where)
    versions = {}
    for name in KEY_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    record = {
        "plan_digest": t4_digest(),
        "uses_digest": uses_digest(uses, variables),
        "checked_on": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": [shlex.join(step) for step in steps],
        "python": platform.python_version(),
        "no_gpu": checker.no_gpu,  # what this GPU-less check could not load, and how it checked instead
        "versions": versions,
        "verified": checker.verified,
        "failures": checker.failures,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{len(checker.verified)} verified, {len(checker.failures)} failures; "
          f"record: {record_path}")
    return 1 if checker.failures else 0


def main() -> int:
    """Command line: --digest | --steps | --if-unchanged | --check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--digest", action="store_true", help="print the T4 plan's digest")
    mode.add_argument("--steps", action="store_true", help="print the plan's uv arguments, one step a line")
    mode.add_argument("--if-unchanged", action="store_true",
                      help="exit 0 when the record matches the plan and our calls, else 1")
    mode.add_argument("--check", action="store_true", help="check against this interpreter's packages")
    args = parser.parse_args()
    if args.digest:
        print(t4_digest())
    elif args.steps:
        print("\n".join(shlex.join(step) for step in t4_steps()))
    elif args.if_unchanged:
        return 0 if unchanged_since_record() else 1
    else:
        return run_check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
