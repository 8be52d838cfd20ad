"""The commands README.md and docs/*.md tell people to run still parse against the current code.

Every shell command in a code block of the documentation (fenced ```` ``` ````, ```` ```bash ````, ```` ```sh ````
..., and indented four-space blocks, where most of docs/performance.md's and docs/distributed.md's commands are)
that runs ``patchmmd ...``, ``python -m patchmmd ...``, ``torchrun ... -m patchmmd ...`` or a script of
``scripts/``, ``benchmarks/`` or ``examples/`` (directly or under ``torchrun``) becomes one test, named
``FILE:LINE:COMMAND``. Each is parsed, never run:

* the ``patchmmd`` command line (click): the subcommand chain is resolved from :data:`patchmmd.cli.main` and the
  leaf command's ``make_context`` parses the arguments: unknown options and subcommands, wrong choices, bad
  numbers, missing required arguments and the options' own callbacks (metric and loss names) fail, the command's
  callback does not run;
* a script: its ``build_parser()`` parses the arguments (every script the docs run exposes one);
* ``torchrun``: its own parser (``torch.distributed.run.get_args_parser``), then the module or script it starts.

How a code block is read: lines ending in ``\\`` are joined; ``#`` comments, ``&&`` / ``||`` / ``;`` / ``|`` /
``&`` chains and redirections are split off; ``NAME=VALUE`` prefixes (``OMP_NUM_THREADS=1 patchmmd ...``) are
dropped; assignments on their own line (``E=--eval-distances=...``, ``export ...``) are remembered and ``$E`` /
``${E}`` expanded in the lines below (an unset variable fails the test, except a scheduler's or the shell's:
``SLURM_*``, ``HOME``, ...); ``$(...)`` stands for one word. Synopsis notation: an optional part ``[--flag
VALUE]`` that starts with an option is included (nested ones too), one that does not (``[options]``,
``[DATA_DIR]``) is left out, and ``a|b|c`` inside one is checked with each alternative. Placeholders
(``WEIGHTS``, ``DIR``, ``ref.png``) are passed as written; where a click path must exist (``exists=True``) and
does not, a temporary file or folder of the kind the parameter accepts stands in for it (the check is
``click.Path``'s own, so only the existence test is bypassed).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import itertools
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT_DIRS = ("scripts", "benchmarks", "examples")
SHELL_TAGS = {"", "bash", "sh", "shell", "console", "zsh", "shell-session"}

# Markers of the synopsis notation, placed by the scanner outside quotes (these characters never occur in docs).
OPEN, CLOSE, ALT = "\x01", "\x02", "\x03"
OPERATORS = {"&&", "||", ";", ";;", "|", "|&", "&", "(", ")"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>", "<<", "<<<", ">|"}
ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# Variables a command may take from its environment (a scheduler's, the shell's) without the block setting them.
ENVIRONMENT = re.compile(r"SLURM_\w+|HOME|USER|PWD|TMPDIR|HOSTNAME")
PYTHON = re.compile(r"(?:\S*/)?python(?:3(?:\.\d+)?)?")
# A logical line that runs one of the checked commands somewhere (the cross-check that extraction misses none).
LOOKS_CHECKED = re.compile(
    r"(?:^|&&|\|\||;|\||\bsrun)\s*(?:[A-Za-z_]\w*=\S*\s+)*"
    r"(?:patchmmd\b|python3?\s+-m\s+patchmmd\b|python3?\s+(?:scripts|benchmarks|examples)/"
    r"|torchrun\b.*?(?:-m\s+patchmmd\b|\s(?:scripts|benchmarks|examples)/\S*\.py))"
)


@dataclass(frozen=True)
class DocCommand:
    """One command of a code block: ``kind`` is ``click`` (argv after ``patchmmd``), ``script`` (argv[0] is the
    script's path) or ``torchrun`` (argv after ``torchrun``); ``variants`` holds one argv per choice of the
    synopsis notation (one when there is none)."""

    doc: str
    line: int
    kind: str
    variants: tuple[tuple[str, ...], ...]
    text: str

    @property
    def id(self) -> str:
        argv = self.variants[0]
        if self.kind == "script":
            label = argv[0]
        elif self.kind == "torchrun":
            label = "torchrun"
        else:
            label = " ".join(["patchmmd", *_subcommand_names(argv)])
        return f"{self.doc}:{self.line}:{label}"


def _subcommand_names(argv: tuple[str, ...]) -> list[str]:
    """The leading words of ``argv`` that name (sub)commands of the ``patchmmd`` group, for the test ids."""
    from patchmmd.cli import main

    names: list[str] = []
    command: click.Command | None = main
    for word in argv:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        names.append(word)
        command = command.commands[word]
    return names


# ------------------------------------------------------------------------------------------- extraction
def code_blocks(text: str, tags: set[str] = SHELL_TAGS, indented: bool = True) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of each code block fenced with one of ``tags`` (by default a shell tag or none)
    and, with ``indented``, of each indented block."""
    lines = text.splitlines()
    i, previous_blank = 0, True
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"( {0,3})(`{3,}|~{3,})\s*([\w-]*)", line)
        if fence:
            marker, tag = fence.group(2), fence.group(3).lower()
            j = i + 1
            while j < len(lines) and not re.match(rf" {{0,3}}{marker[0]}{{{len(marker)},}}\s*$", lines[j]):
                j += 1
            if tag in tags:
                yield i + 2, lines[i + 1 : j]  # (indentation does not matter to the shell)
            i, previous_blank = j + 1, False
            continue
        if indented and previous_blank and (line.startswith("    ") or line.startswith("\t")) and line.strip():
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or lines[j].startswith("\t") or not lines[j].strip()):
                j += 1
            yield i + 1, lines[i:j]
            i, previous_blank = j, True
            continue
        previous_blank = not line.strip()
        i += 1


def logical_lines(first: int, block: list[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) with ``\\``-continued lines joined and a ``$ `` prompt removed."""
    start, parts = None, []
    for number, line in enumerate(block, first):
        line = line.strip()
        if start is None:
            start = number
            line = line[2:] if line.startswith("$ ") else line
        if (len(line) - len(line.rstrip("\\"))) % 2:  # an odd number of trailing backslashes: continued
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield start, " ".join(p.strip() for p in parts)
        start, parts = None, []
    if start is not None:
        yield start, " ".join(p.strip() for p in parts)


def _matching_paren(text: str, open_at: int) -> int:
    depth, quote = 0, ""
    for k in range(open_at, len(text)):
        c = text[k]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return k
    raise ValueError("unbalanced $(")


def _lookup(name: str, variables: dict[str, str]) -> str:
    if name in variables:
        return variables[name]
    if ENVIRONMENT.fullmatch(name):
        return name
    raise ValueError(f"${name} is not set in this code block")


def scan(text: str, variables: dict[str, str]) -> str:
    """``text`` with comments removed, variables and ``$(...)`` expanded, and the synopsis notation marked
    (:data:`OPEN`, :data:`CLOSE`, :data:`ALT`), all outside quotes; the rest (quotes included) for shlex."""
    out: list[str] = []
    i, n, depth, word_start = 0, len(text), 0, True
    while i < n:
        c = text[i]
        if c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise ValueError("unbalanced single quote")
            out.append(text[i : j + 1])
            i, word_start = j + 1, False
        elif c == '"':
            buf, j = ['"'], i + 1
            while j < n and text[j] != '"':
                m = VARIABLE.match(text, j)
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j : j + 2])
                    j += 2
                elif m:
                    value = _lookup(m.group(1) or m.group(2), variables)
                    buf.append(re.sub(r'(["\\$`])', r"\\\1", value))
                    j = m.end()
                elif text.startswith("$(", j):
                    buf.append("CMD_OUTPUT")
                    j = _matching_paren(text, j + 1) + 1
                else:
                    buf.append(text[j])
                    j += 1
            if j >= n:
                raise ValueError("unbalanced double quote")
            out.append("".join(buf) + '"')
            i, word_start = j + 1, False
        elif c == "\\" and i + 1 < n:
            out.append(text[i : i + 2])
            i, word_start = i + 2, False
        elif c in " \t":
            out.append(c)
            i, word_start = i + 1, True
        elif c == "#" and word_start:
            break
        elif c == "$" and (VARIABLE.match(text, i) or text.startswith("$(", i)):
            m = VARIABLE.match(text, i)
            if m:
                value = _lookup(m.group(1) or m.group(2), variables)
                out.append(" ".join(shlex.quote(w) for w in value.split()))
                i = m.end()
            else:
                out.append("CMD_OUTPUT")
                i = _matching_paren(text, i + 1) + 1
            word_start = False
        elif c == "[" and word_start:
            out.append(OPEN)
            depth, i = depth + 1, i + 1
        elif c == "]" and depth and (i + 1 == n or text[i + 1] in " \t]"):
            out.append(CLOSE)
            depth, i = depth - 1, i + 1
        elif c == "|" and depth and not word_start and i + 1 < n and text[i + 1] not in " \t|":
            out.append(ALT)
            i += 1
        else:
            out.append(c)
            word_start = c in ";&|()<>"
            i += 1
    if depth:
        raise ValueError("unbalanced [ of an optional part")
    return "".join(out)


def simple_commands(scanned: str) -> Iterator[list[str]]:
    """The words of each command of a scanned line, split at ``&&``, ``|``, ``;``, ..., without redirections."""
    lexer = shlex.shlex(scanned, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    tokens = iter(list(lexer))
    for token in tokens:
        if token in OPERATORS:
            if words:
                yield words
            words = []
        elif token in REDIRECTIONS:
            next(tokens, None)
        else:
            words.append(token)
    if words:
        yield words


def expand_synopsis(words: list[str]) -> list[tuple[str, ...]]:
    """One argv per choice of the synopsis notation: optional parts that start with an option are included,
    others left out, ``a|b`` inside one gives a variant per alternative."""
    stream: list[Any] = []  # OPEN, CLOSE or a list of alternatives
    for word in words:
        core = word.lstrip(OPEN)
        stream += [OPEN] * (len(word) - len(core))
        closes = len(core) - len(core.rstrip(CLOSE))
        core = core.rstrip(CLOSE)
        if core:
            stream.append(core.split(ALT))
        stream += [CLOSE] * closes

    def parse(k: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        while k < len(stream) and stream[k] != CLOSE:
            if stream[k] == OPEN:
                group, k = parse(k + 1)
                items.append(("group", group))
            else:
                items.append(("word", stream[k]))
            k += 1
        return items, k

    def first_word(items: list[Any]) -> str:
        for kind, value in items:
            found = value[0] if kind == "word" else first_word(value)
            if found:
                return str(found)
        return ""

    def expand(items: list[Any]) -> list[tuple[str, ...]]:
        results: list[tuple[str, ...]] = [()]
        for kind, value in items:
            choices: list[tuple[str, ...]]
            if kind == "word":
                choices = [(alt,) for alt in value]
            else:
                choices = expand(value) if first_word(value).startswith("-") else [()]
            results = [r + c for r in results for c in choices]
        return results

    variants = expand(parse(0)[0])
    if len(variants) > 64:
        raise ValueError(f"{len(variants)} variants of the synopsis notation: too many to check")
    return variants


def classify(words: list[str]) -> tuple[str, list[str]] | None:
    """(kind, argv) of a command this module checks, or None (pip, git, python -m pytest, ...)."""
    while words and words[0] == "srun":  # a launcher in front (its own options given as --opt=value)
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[1:]
    if not words:
        return None
    head = words[0]
    if head == "patchmmd":
        return "click", words[1:]
    if head == "torchrun":
        rest = words[1:]
        runs_ours = any(a == "-m" and b == "patchmmd" for a, b in itertools.pairwise(rest)) or any(
            _is_script(w) for w in rest
        )
        return ("torchrun", rest) if runs_ours else None
    if PYTHON.fullmatch(head):
        k = 1
        while k < len(words) and words[k].startswith("-") and words[k] not in ("-m", "-c"):
            k += 2 if words[k] in ("-X", "-W") else 1
        if k + 1 < len(words) and words[k] == "-m" and words[k + 1] == "patchmmd":
            return "click", words[k + 2 :]
        if k < len(words) and _is_script(words[k]):
            return "script", words[k:]
    return None


def _is_script(word: str) -> bool:
    parts = Path(word).parts
    return word.endswith(".py") and len(parts) >= 2 and parts[0] in SCRIPT_DIRS


def extract(text: str, doc: str) -> tuple[list[DocCommand], list[tuple[int, str]], list[tuple[int, str]]]:
    """The checked commands of a markdown text, the logical lines that look like one (for the cross-check),
    and (line, message) for lines that look like one but cannot be read."""
    commands: list[DocCommand] = []
    looks: list[tuple[int, str]] = []
    errors: list[tuple[int, str]] = []
    for first, block in code_blocks(text):
        variables: dict[str, str] = {}
        for number, line in logical_lines(first, block):
            if LOOKS_CHECKED.search(line.strip()):
                looks.append((number, line))
            try:
                scanned = scan(line, variables)
                for words in simple_commands(scanned):
                    export = words[0] == "export"
                    k = 1 if export else 0
                    while k < len(words) and ASSIGNMENT.match(words[k]):
                        k += 1
                    if k == len(words):  # assignments alone: they hold for the lines below
                        for w in words[1 if export else 0 :]:
                            name, _, value = w.partition("=")
                            variables[name] = value
                        continue
                    found = classify(words[k:])
                    if found is not None:
                        kind, argv = found
                        variants = tuple(expand_synopsis(argv))
                        commands.append(DocCommand(doc, number, kind, variants, line))
            except ValueError as e:
                if LOOKS_CHECKED.search(line.strip()):
                    errors.append((number, f"cannot read {line!r}: {e}"))
    return commands, looks, errors


@functools.cache
def doc_commands() -> tuple[DocCommand, ...]:
    found: list[DocCommand] = []
    for path in DOC_FILES:
        found += extract(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())[0]
    return tuple(found)


# --------------------------------------------------------------------------------------------- checking
class NotParsed(AssertionError):
    """A documented command that the current code does not accept."""


@functools.cache
def _script(path: str) -> ModuleType:
    file = ROOT / path
    if not file.is_file():
        raise NotParsed(f"{path}: no such script")
    name = "_docs_command_" + re.sub(r"\W", "_", path)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _argparse(parser: Any, argv: list[str], what: str) -> Any:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            message = err.getvalue().strip().splitlines()[-1:] or [f"exit status {e.code}"]
            raise NotParsed(f"{what} {shlex.join(argv)}: {message[0]}") from None
    return None


def check_script(argv: list[str]) -> None:
    module = _script(argv[0])
    build = getattr(module, "build_parser", None)
    if build is None:
        raise NotParsed(f"{argv[0]} has no build_parser(): its command line cannot be checked")
    _argparse(build(), argv[1:], argv[0])


def check_click(argv: list[str]) -> None:
    """Resolve the subcommands from :data:`patchmmd.cli.main` and parse the leaf's arguments (no callback)."""
    from patchmmd.cli import main

    command: click.Command = main
    name, parent, rest = "patchmmd", None, list(argv)
    try:
        while isinstance(command, click.Group):
            ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
            with ctx.scope(cleanup=False):
                # the group's own options; what is left starts with the subcommand's name
                rest = click.Command.parse_args(command, ctx, rest)
            if not rest:
                raise NotParsed(f"patchmmd {shlex.join(argv)}: no subcommand of {ctx.command_path!r}")
            sub_name, sub, rest = command.resolve_command(ctx, rest)
            assert sub is not None and sub_name is not None
            command, name, parent = sub, sub_name, ctx
        with command.make_context(name, _metavars_to_defaults(command, rest), parent=parent) as leaf:
            _check_names(leaf.params)
    except click.exceptions.Exit as e:  # --help, --version
        if e.exit_code != 0:
            raise NotParsed(f"patchmmd {shlex.join(argv)}: exit status {e.exit_code}") from None
    except click.ClickException as e:
        raise NotParsed(f"patchmmd {shlex.join(argv)}: {e.format_message()}") from None


def _metavars_to_defaults(command: click.Command, args: list[str]) -> list[str]:
    """A placeholder (``NAME``) for the value of a text option that a callback checks and that has a default
    (``--metric NAME``, ``--loss NAME``) as that default: the callback (the registry) would refuse any
    placeholder. Options whose type checks the value (choices, numbers) keep what the doc wrote."""
    options = {
        o: p for p in command.params if isinstance(p, click.Option) and not p.is_flag and p.callback is not None
        and p.type is click.STRING and isinstance(p.default, str) for o in p.opts
    }
    out = list(args)
    for k in range(1, len(out)):
        param = options.get(out[k - 1])
        if param is not None and re.fullmatch(r"[A-Z][A-Z0-9_]*", out[k]):
            out[k] = str(param.default)
    return out


def _check_names(params: dict[str, Any]) -> None:
    """The registry names in the values the commands check before any work (``eval -m a,b``, ``eval suite
    --candidate NAME:K=V``, ``--eval-distances a,b``), as they check them (``get_spec``, ``parse_candidate``)."""
    from patchmmd.evaluation.suite import parse_candidate
    from patchmmd.metrics.registry import get_spec

    names = [n for value in params.get("metrics") or () for n in value.split(",")]
    names += [n for n in (params.get("eval_distances") or "").split(",")]
    for spec in params.get("candidates") or ():
        try:
            names.append(parse_candidate(spec)[0])
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--candidate") from None
    for name in (n.strip() for n in names):
        if name:
            try:
                get_spec(name)
            except ValueError as e:
                raise click.BadParameter(str(e), param_hint="a metric name") from None


def check_torchrun(argv: list[str]) -> None:
    try:
        from torch.distributed.run import get_args_parser
    except ImportError:  # a PyTorch build without torch.distributed
        pytest.skip("torch.distributed.run is not available in this PyTorch build")

    args = _argparse(get_args_parser(), argv, "torchrun")
    if args is None:
        return
    target = [args.training_script, *args.training_script_args]
    if args.module and args.training_script == "patchmmd":
        check_click(target[1:])
    elif not args.module and not args.no_python and _is_script(args.training_script):
        check_script(target)
    else:
        raise NotParsed(f"torchrun {shlex.join(argv)}: starts {args.training_script!r}, not patchmmd or a script")


def check(command: DocCommand) -> None:
    for argv in command.variants:
        {"click": check_click, "script": check_script, "torchrun": check_torchrun}[command.kind](list(argv))


@pytest.fixture
def existing_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A click path that must exist and does not (a placeholder) is checked as a temporary file or folder."""
    original = click.Path.convert
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")

    def convert(self: click.Path, value: Any, param: Any, ctx: Any) -> Any:
        if self.exists and isinstance(value, str) and not Path(value).exists():
            value = str(tmp_path / ("file" if self.file_okay else "folder"))
        return original(self, value, param, ctx)

    monkeypatch.setattr(click.Path, "convert", convert)


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("command", doc_commands(), ids=lambda c: c.id)
@pytest.mark.usefixtures("existing_paths")
def test_documented_command_parses(command: DocCommand) -> None:
    check(command)


def test_every_command_looking_line_is_checked_and_readable() -> None:
    """Extraction misses nothing: each code-block line that runs patchmmd, torchrun or a script is checked."""
    problems = []
    total = 0
    for path in DOC_FILES:
        doc = path.relative_to(ROOT).as_posix()
        commands, looks, errors = extract(path.read_text(encoding="utf-8"), doc)
        total += len(commands)
        checked = {c.line for c in commands}
        problems += [f"{doc}:{n}: {msg}" for n, msg in errors]
        problems += [f"{doc}:{n}: not extracted: {line}" for n, line in looks if n not in checked]
    assert not problems, "\n".join(problems)
    assert total >= 40  # the docs hold dozens; a broken extractor would find few


# The check can fail: copies of documentation blocks, each with one mistake: (block, what the failure names,
# (the mistake, its correction)).
BROKEN_BLOCKS: dict[str, tuple[str, str, tuple[str, str]]] = {
    "unknown option": (
        "```bash\npatchmmd eval suite --candidate mmdpp --threads 2 --task-seedz 3 --weights WEIGHTS \\\n"
        "    --human live-dev=labels.csv --out suite-out\n```\n", "--task-seedz", ("seedz", "seeds")),
    "unknown option, indented block, env prefix": (
        "Run:\n\n    E=--eval-distances=mmdpp-pixelwise,random-cnn   # the column\n"
        "    OMP_NUM_THREADS=1 patchmmd train-sr --steps 50 --max-tilez 6 --loss l2 $E --out runs/x\n",
        "--max-tilez", ("tilez", "tiles")),
    "wrong choice": ("```\npatchmmd score ref/ dist/ --out s.csv --mode RGBA\n```\n", "RGBA", ("RGBA", "RGB")),
    "missing required option": (
        "```sh\npatchmmd score ref/ distorted/ [--metric mmdpp]\n```\n", "--out", ("mmdpp]", "mmdpp] --out s.csv")),
    "unknown metric (an option's callback)": (
        "```\npatchmmd compare a.png b.png --metric mmdpq\n```\n", "mmdpq", ("mmdpq", "mmdpp")),
    "unknown subcommand": ("```\npatchmmd evaluate suite --quick\n```\n", "evaluate", ("evaluate", "eval")),
    "synopsis alternative": (
        "```\npatchmmd score --all-pairs photos/ --out p.csv [--mode RGB|CMYK]\n```\n", "CMYK", ("CMYK", "L")),
    "script option": (
        "```\npython benchmarks/bench_perf.py --threads 1 --repetitions 7 --out bench.csv\n```\n", "--repetitions",
        ("repetitions", "repeats")),
    "script positional": (
        "```\npython scripts/sr_loss_variants.py --weights WEIGHTS --seeds 0,1,2\n```\n", "variants",
        ("0,1,2", "0,1,2 l2")),
    "missing script": (
        "```\npython scripts/no_such_script.py --steps 5\n```\n", "no such script",
        ("scripts/no_such_script", "examples/ddp_train")),
    "torchrun option": (
        "```\ntorchrun --nprocs=4 -m patchmmd score ref/ dist/ --out s.csv\n```\n", "--nprocs",
        ("nprocs", "nproc-per-node")),
    "under torchrun": (
        "```\nsrun torchrun --nproc_per_node=4 -m patchmmd score a/ b/ --out s.csv --resum\n```\n", "--resum",
        ("resum", "resume")),
    "chained after pip": (
        '```\npip install -e ".[cli]" && patchmmd demo --outdir demo\n```\n', "--outdir", ("outdir", "out")),
    "unknown metric in a list": (
        "```\npatchmmd eval mos labels.csv -m mmdpp,psnr,lpips-alx --out x\n```\n", "lpips-alx", ("alx", "alex")),
    "unknown candidate": (
        "```\npatchmmd eval suite --candidate mmdpp:preset=loss --candidate mmpd --quick\n```\n", "mmpd",
        ("mmpd", "mmdpp-followup")),
    "unknown evaluated distance": (
        "```\npatchmmd gim --shifts 4 astronaut --eval-distances=mmdpp,rand-cnn\n```\n", "rand-cnn",
        ("rand-", "random-")),
}


@pytest.mark.parametrize("name", BROKEN_BLOCKS)
@pytest.mark.usefixtures("existing_paths")
def test_a_mistake_in_a_copy_of_a_doc_block_fails(name: str) -> None:
    block, expected, (mistake, correction) = BROKEN_BLOCKS[name]
    commands, _, errors = extract(block, "copy.md")
    assert len(commands) == 1 and not errors, (commands, errors)
    with pytest.raises(NotParsed, match=re.escape(expected)):
        check(commands[0])
    # and the same block, corrected, passes
    (command,) = extract(block.replace(mistake, correction), "copy.md")[0]
    check(command)


def test_reading_of_blocks() -> None:
    text = (
        "```bash\n"
        "N=normalised-mmd:features=256  # a comment\n"
        'python scripts/x.py --a 1 $N,weight=2 "$N,sigma=[0.25,0.5]" \\\n'
        "    '$N' [--b B [--c]] [options] [--d x|y]   # --e\n"
        "```\n"
        "```python\npatchmmd not shell\n```\n"
    )
    (command,), looks, errors = extract(text, "t.md")
    assert (command.line, command.kind, errors, [n for n, _ in looks]) == (3, "script", [], [3])
    base = ("scripts/x.py", "--a", "1", "normalised-mmd:features=256,weight=2",
            "normalised-mmd:features=256,sigma=[0.25,0.5]", "$N", "--b", "B", "--c", "--d")
    assert command.variants == ((*base, "x"), (*base, "y"))
    assert extract("```\npatchmmd x $UNSET\n```\n", "t.md")[2] == [(2, "cannot read 'patchmmd x $UNSET': "
                                                                      "$UNSET is not set in this code block")]


def test_placeholder_for_a_path_that_must_exist(existing_paths: None) -> None:
    """``DATA_DIR`` of ``train-ae`` must exist (``click.Path(exists=True)``): a temporary folder stands in for it,
    while the kind is still checked (a folder, not a file) and the other arguments as usual."""
    (command,) = extract("```\npatchmmd train-ae DATA_DIR --loss l2 --steps 5\n```\n", "t.md")[0]
    check(command)
    (command,) = extract("```\npatchmmd train-ae DATA_DIR --loss l2 --steps none\n```\n", "t.md")[0]
    with pytest.raises(NotParsed, match="--steps"):
        check(command)
