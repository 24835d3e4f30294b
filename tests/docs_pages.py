"""The checker behind tests/test_docs.py: finds the commands, links, config fields and paths that
README.md and docs/*.md name, and says what is wrong with each.

A command is a fenced-block line (backslash continuations joined) or an inline code span of
the form `python -m MODULE ...`, `.venv/bin/python -m MODULE ...`, `python benchmarks/X.py
...`, `python launch/X.py ...` or `bash launch/...`, for a module or script of this
repository (pip, pytest and venv are not ours). Bracketed optional parts and `...` are
dropped; nothing else is substituted, so the rest must parse as written. A bare mention
(`python -m mypt_jax.train` with no arguments) only has to run with `--help`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

from test_entry_points import ENTRY_POINTS

# tests/test_entry_points.py runs these with --help already.
HELP_CHECKED_ELSEWHERE = frozenset(f"mypt_jax.{name}" for name in ENTRY_POINTS)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
REPO_DIRS = ("configs", "datagen", "benchmarks", "launch", "mypt_jax", "tests", "docs")
SCRIPT_DIRS = ("benchmarks", "launch")
PYTHONS = ("python", "python3", ".venv/bin/python", ".venv/bin/python3")
OPERATORS = ("&&", "||", ";", "|")
PLACEHOLDER_FIELDS = ("field",)  # `--config.field=value`: the pages' name for any field (so is FIELD)
FILE_SUFFIXES = ("json", "py")  # `config.json` is the checkpoint's file, not a field
HELP_TIMEOUT_S = 180

FENCE = re.compile(r"^\s*(```|~~~)\s*(\w*)")
SPAN = re.compile(r"(`+)((?:(?!\n\s*\n).)+?)\1", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FIELD = re.compile(r"(?<![\w./-])(?:--)?config\.([A-Za-z_]\w*)")
SET_FIELD = re.compile(r"--set[ =]([A-Za-z_]\w*)=")
REPO_PATH = re.compile(rf"(?<![\w./~$-])((?:{'|'.join(REPO_DIRS)})/[\w./-]*\w)")


@dataclasses.dataclass(frozen=True)
class Snippet:
    where: str  # "docs/preflight.md:12"
    text: str


@dataclasses.dataclass(frozen=True)
class Command:
    where: str
    text: str
    kind: str  # "module" | "script" (python) | "bash"
    entry: str  # "mypt_jax.train", "benchmarks/bench_phase.py", "launch/tpu.py"
    args: tuple[str, ...]  # placeholders dropped


class Refused(Exception):
    """What an argparse parser would have exited with."""


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@functools.cache
def config_fields() -> frozenset[str]:
    from configs import base

    return frozenset(base.get_config().keys())


# ----------------------------------------------------------------------------- reading a page


def snippets(name: str, text: str) -> list[Snippet]:
    """Fenced lines outside python blocks (continuations joined), then inline code spans."""
    out, prose, lang, pending = [], [], None, None
    for n, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        prose.append("" if fence or lang is not None else line)
        if fence:
            lang = fence.group(2).lower() if lang is None else None
        elif lang is not None and lang != "python":
            start, joined = pending or (n, "")
            joined = f"{joined} {line.strip()}" if pending else line
            pending = (start, joined[:-1]) if joined.endswith("\\") else None
            if pending is None:
                out.append(Snippet(f"{name}:{start}", joined))
    body = "\n".join(prose)
    for m in SPAN.finditer(body):
        line = body.count("\n", 0, m.start()) + 1
        out.append(Snippet(f"{name}:{line}", " ".join(m.group(2).split())))
    return out


def strip_placeholders(tokens: Sequence[str]) -> tuple[str, ...]:
    out, depth = [], 0
    for token in tokens:
        if depth or token.startswith("["):
            depth += token.count("[") - token.count("]")
        elif token != "...":
            out.append(token)
    return tuple(out)


def segments(tokens: list[str]) -> Iterator[list[str]]:
    """The simple commands of a line: no environment assignments, no redirections."""
    current: list[str] = []
    tokens = iter([*tokens, ";"])
    for token in tokens:
        if token in (">", ">>", "2>", "<"):
            next(tokens, None)  # and its file
        elif re.match(r"\d?>", token):
            continue
        elif token not in OPERATORS:
            current.append(token)
        else:
            while current and re.fullmatch(r"[A-Za-z_]\w*=\S*", current[0]):
                current.pop(0)
            if current:
                yield current
            current = []


def command_of(where: str, text: str, words: list[str]) -> Command | None:
    if len(words) >= 3 and words[0] in PYTHONS and words[1] == "-m":
        if (REPO / words[2].split(".")[0]).is_dir():
            return Command(where, text, "module", words[2], strip_placeholders(words[3:]))
    elif len(words) >= 2 and words[0] in (*PYTHONS, "bash"):
        if words[1].split("/")[0] in SCRIPT_DIRS and "/" in words[1]:
            kind = "bash" if words[0] == "bash" else "script"
            return Command(where, text, kind, words[1], strip_placeholders(words[2:]))
    return None


def commands(snips: Sequence[Snippet]) -> tuple[list[Command], list[str]]:
    found, problems = [], []
    for s in snips:
        if not re.search(r"(^|[\s/])(python3?|bash)\s", s.text):
            continue
        try:
            tokens = shlex.split(s.text, comments=True)
        except ValueError as e:
            problems.append(f"{s.where}: `{s.text}`: cannot split into words ({e})")
            continue
        for words in segments(tokens):
            cmd = command_of(s.where, s.text, words)
            if cmd is not None:
                found.append(cmd)
    return found, problems


# ----------------------------------------------------------------------------- page checks


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


def link_problems(path: Path, text: str) -> list[str]:
    problems = []
    for m in LINK.finditer(text):
        target, where = m.group(1), f"{rel(path)}:{text.count(chr(10), 0, m.start()) + 1}"
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{where}: link {target}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: link {target}: no heading #{anchor} in {file}")
    return problems


def field_problems(name: str, text: str) -> list[str]:
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in [*FIELD.finditer(line), *SET_FIELD.finditer(line)]:
            field = m.group(1)
            if field.isupper() or field in (*PLACEHOLDER_FIELDS, *FILE_SUFFIXES, *config_fields()):
                continue
            problems.append(f"{name}:{n}: {m.group(0)}: {field} is not a field of configs/base.py")
    return problems


def path_problems(snips: Sequence[Snippet]) -> list[str]:
    problems = []
    for s in snips:
        for m in REPO_PATH.finditer(s.text):
            path = m.group(1).split(":")[0]
            if not (REPO / path).exists():
                problems.append(f"{s.where}: {path} does not exist in the repository")
    return problems


# ----------------------------------------------------------------------------- entry points


@contextlib.contextmanager
def script_import(directory: Path) -> Iterator[None]:
    """sys.path, sys.argv and os.environ as a script sees them, restored afterwards."""
    saved_path, saved_argv, saved_env = list(sys.path), list(sys.argv), dict(os.environ)
    sys.path[:0] = [str(directory), str(REPO)]
    sys.argv = [str(directory / "script.py")]
    try:
        yield
    finally:
        sys.path[:], sys.argv[:] = saved_path, saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


@functools.cache
def entry_module(kind: str, entry: str) -> ModuleType:
    """The module whose build_parser() parses the entry point's command line."""
    if kind != "module":
        path = REPO / entry
        spec = importlib.util.spec_from_file_location(f"mypt_docs_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        with script_import(path.parent):
            spec.loader.exec_module(module)
        return module
    spec = importlib.util.find_spec(entry)
    if spec is None:
        raise LookupError(f"no module {entry}")
    package = spec.submodule_search_locations is not None
    source = Path(spec.origin).parent / "__main__.py" if package else Path(spec.origin)
    tree = ast.parse(source.read_text())
    if not package and any(getattr(n, "name", None) == "build_parser" for n in tree.body):
        return importlib.import_module(entry)
    for node in tree.body:  # `from the.real.module import main`
        if isinstance(node, ast.ImportFrom) and any(a.name == "main" for a in node.names):
            return importlib.import_module(node.module)
    raise LookupError(f"{entry}: no build_parser(), and no `from X import main` to find one")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for p in found:
        found.extend(subcommands(p).values())
    return found


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No abbreviated flags (the pages spell them out), errors raised instead of exiting."""

    def refuse(message: str) -> None:
        raise Refused(message)

    for p in all_parsers(parser):
        p.allow_abbrev = False
        p.error = refuse
    return parser


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for p in all_parsers(parser) for a in p._actions for s in a.option_strings}


def load_configs(specs: Sequence[str], overrides: Sequence[str]) -> None:
    """Each `--config` file with the `--config.field=value` overrides, typed as absl does."""
    from mypt_jax.data import inspect as data_inspect

    for spec in specs:
        path, sep, arg = spec.partition(":")
        data_inspect.load_config(str(REPO / path) + sep + arg, overrides)


def train_problem(args: Sequence[str]) -> str | None:
    """`mypt_jax.train` is absl: the upstream flags come off first (as its cli() does)."""
    from mypt_jax.interop import upstream_cli

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            upstream, rest = upstream_cli.split_argv(args)
    except SystemExit:
        return f"upstream flags: {err.getvalue().strip().splitlines()[-1]}"
    specs = [] if not upstream_cli.given(upstream) else [upstream_cli.base_preset()]
    overrides, rest = [], list(rest)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--distributed", "--nodistributed") and not eq:
            continue
        if name not in ("--config", "--workdir") and not name.startswith("--config."):
            return f"{arg}: not a flag of mypt_jax.train (--config, --config.FIELD, --workdir, --distributed, upstream flags)"
        if not eq:
            if not rest:
                return f"{arg}: needs a value"
            value = rest.pop(0)
        if name == "--config":
            specs = [value]
        elif name.startswith("--config."):
            overrides.append(f"{name}={value}")
    if not specs:
        return "no --config (required unless upstream flags are given)"
    load_configs(specs, overrides)
    return None


def parse_problem(cmd: Command) -> str | None:
    """Why the command's arguments would not parse, or None."""
    if cmd.entry == "mypt_jax.train":
        return train_problem(cmd.args)
    if cmd.kind == "bash":
        return None  # a shell script has no parser to ask; --help runs it
    module = entry_module(cmd.kind, cmd.entry)
    if not hasattr(module, "build_parser"):
        return f"{module.__name__} has no build_parser() to check the command with"
    parser = strict(module.build_parser())
    args, rest = parser.parse_known_args(list(cmd.args))
    overrides = [a for a in rest if a.startswith("--config.") and "--config" in options(parser)]
    unknown = [a for a in rest if a not in overrides]
    if unknown:
        return f"unrecognized arguments: {' '.join(unknown)}"
    specs = getattr(args, "config", None) if "--config" in options(parser) else None
    if specs:
        load_configs([specs] if isinstance(specs, str) else specs, overrides)
    return None


def command_problems(cmds: Sequence[Command]) -> list[str]:
    problems = []
    for cmd in cmds:
        if not cmd.args:
            continue  # a bare mention: the --help run checks it
        try:
            problem = parse_problem(cmd)
        except Exception as e:  # noqa: BLE001 - every failure is the page's problem to report
            problem = f"{type(e).__name__}: {e}"
        if problem:
            problems.append(f"{cmd.where}: `{cmd.text}`: {problem}")
    return problems


# ----------------------------------------------------------------------------- subprocesses


def help_argv(kind: str, entry: str) -> tuple[str, ...]:
    if kind == "module":
        return (sys.executable, "-m", entry, "--help")
    return ("bash" if kind == "bash" else sys.executable, entry, "--help")


def dry_run_argv(cmd: Command) -> tuple[str, ...] | None:
    """A launcher subcommand as written plus --dry_run, when the subcommand takes it."""
    if not cmd.entry.startswith("launch/") or cmd.kind != "script" or not cmd.args:
        return None
    sub = subcommands(entry_module(cmd.kind, cmd.entry).build_parser()).get(cmd.args[0])
    if sub is None or "--dry_run" not in options(sub):
        return None
    return (sys.executable, cmd.entry, cmd.args[0], "--dry_run", *cmd.args[1:])


def run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HELP_TIMEOUT_S)


def help_problem(kind: str, entry: str, done: subprocess.CompletedProcess) -> str | None:
    name = entry if kind == "module" else Path(entry).name
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
        return f"exit {done.returncode}: {tail[0]}"
    if name not in done.stdout:
        return f"exit 0, but no usage naming {name} on stdout"
    return None


# ----------------------------------------------------------------------------- the pages


@functools.cache
def collected() -> tuple[tuple[Command, ...], tuple[str, ...], tuple[Snippet, ...]]:
    cmds, problems, snips = [], [], []
    for page in pages():
        found = snippets(rel(page), page.read_text())
        page_cmds, page_problems = commands(found)
        cmds += page_cmds
        problems += page_problems
        snips += found
    return tuple(cmds), tuple(problems), tuple(snips)


@dataclasses.dataclass
class Job:
    help_of: Command | None  # a --help run of this command's entry point; None: a dry run
    wheres: list[str]


def subprocess_jobs() -> dict[tuple[str, ...], Job]:
    jobs: dict[tuple[str, ...], Job] = {}
    for cmd in collected()[0]:
        if cmd.entry not in HELP_CHECKED_ELSEWHERE:
            jobs.setdefault(help_argv(cmd.kind, cmd.entry), Job(cmd, [])).wheres.append(cmd.where)
        argv = dry_run_argv(cmd)
        if argv:
            jobs.setdefault(argv, Job(None, [])).wheres.append(cmd.where)
    return jobs
