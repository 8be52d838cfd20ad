"""The documentation's concrete claims that can be checked mechanically hold against the code.

tests/test_docs_commands.py parses the commands of the docs' code blocks and tests/test_docs_examples.py runs
their Python blocks; this module checks what the prose and the inline code name:

* cross-references: ``docs/method.md §3.2``, ``docs/performance.md, "Features"``, ``[text](file.md#anchor)`` and
  ``docs/X.md`` name sections and files that exist (in the docs and in the package's docstrings and comments);
* options: every ``--option`` the docs name exists on a ``patchmmd`` command or a script of the repository, and
  in a section about one command (``## `patchmmd score` ``), on that command or one the paragraph names; inline
  ``patchmmd ...`` spans name existing subcommands and options of them;
* Python: every ``patchmmd.x.y`` resolves; ``name(arg=default, ...)`` spans that document a signature name real
  parameters and their real defaults;
* files and the package map: paths of the repository named in the docs exist; docs/architecture.md's tree names
  existing files and every module of the package;
* environment variables, extras and the ``--loss`` names of docs/tasks.md match the code;
* the commands written in the package's docstrings (the click help's examples) parse, as the docs' do.

Each checker returns a list of problems; ``test_a_broken_copy_fails`` shows that each one finds a mistake planted
in a copy of a real passage.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from test_docs_commands import DOC_FILES, ROOT, NotParsed, check, existing_paths, extract  # noqa: F401

SRC = ROOT / "src" / "patchmmd"
PY_FILES = sorted(p for p in SRC.rglob("*.py"))
SCRIPTS = sorted(p for d in ("scripts", "benchmarks", "examples") for p in (ROOT / d).glob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def doc_texts() -> dict[str, str]:
    return {rel(p): p.read_text(encoding="utf-8") for p in DOC_FILES}


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def without_fences(text: str) -> str:
    """``text`` with fenced code blocks blanked (line numbers kept): inline code and prose only."""
    out, fenced = [], False
    for line in text.splitlines():
        if re.match(r" {0,3}(```|~~~)", line):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def inline_spans(text: str) -> Iterator[tuple[int, str]]:
    """(line, content with whitespace collapsed) of each inline code span outside fenced blocks; a span may
    continue over a line break, as markdown allows."""
    prose = without_fences(text)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        yield line_of(prose, m.start()), " ".join(m.group(1).split())


# ------------------------------------------------------------------------------------- cross-references
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than ``-`` and ``_`` dropped, spaces to ``-``."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def headings(doc: str) -> tuple[str, ...]:
    """The headings of ``docs/NAME.md`` (or README.md), without ``#`` and backticks."""
    path = ROOT / doc
    if not path.is_file():
        return ()
    found = []
    for line in without_fences(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            found.append(m.group(1).replace("`", ""))
    return tuple(found)


@functools.cache
def bold_labels(doc: str) -> tuple[str, ...]:
    """The bold run-in labels of a page's paragraphs (``**Features.** ...``), also named as sections."""
    path = ROOT / doc
    if not path.is_file():
        return ()
    return tuple(m.group(1).rstrip(".:") for m in
                 re.finditer(r"(?m)^\s*(?:[-*]\s+)?\*\*([^*]+)\*\*", path.read_text(encoding="utf-8")))


def _doc_path(name: str, source: str) -> str:
    """``docs/X.md`` for a reference written ``docs/X.md`` or, from a page of docs/, ``X.md``."""
    if name.startswith("docs/") or name == "README.md":
        return name
    if source.startswith("docs/") or name != "README.md":
        return f"docs/{name}"
    return name


def normalized(text: str) -> str:
    """Comment markers at line starts removed and whitespace collapsed, so that a reference broken over lines
    of a docstring or a ``#`` comment reads as one."""
    return " ".join(re.sub(r"(?m)^\s*#+ ?", " ", text).split())


def check_references(text: str, source: str) -> list[str]:
    """Problems with the sections and files ``text`` (the contents of ``source``) refers to."""
    problems = []
    flat = normalized(text)
    # in Python files only references written docs/NAME.md (``a.md`` there may be an attribute)
    doc_name = r"(?:docs/[\w-]+\.md|README\.md)" if source.endswith(".py") else r"(?:docs/)?[A-Za-z][\w-]*\.md"
    for m in re.finditer(rf"({doc_name})\s*§\s*(\d+(?:\.\d+)?)(?:\s*[–-]\s*(\d+(?:\.\d+)?))?", flat):
        doc = _doc_path(m.group(1), source)
        for number in filter(None, (m.group(2), m.group(3))):
            if not any(re.match(rf"{re.escape(number)}(?:\.|\s)", h) for h in headings(doc)):
                problems.append(f"{source}: {m.group(0)!r}: {doc} has no section {number}")
    for m in re.finditer(rf"({doc_name})(?:\),)?,?\s+(?:section\s+)?\"([^\"]+)\"", flat):
        doc, title = _doc_path(m.group(1), source), m.group(2).replace("`", "")
        names = [*headings(doc), *bold_labels(doc)]
        if not any(n == title or n.startswith(title) for n in names):
            problems.append(f"{source}: {m.group(0)!r}: {doc} has no section or paragraph {title!r}")
    for m in re.finditer(r"(?<![\w/.-])((?:docs/)[\w-]+\.md|README\.md)", flat):
        if flat[max(0, m.start() - 5) : m.start()] == "--md ":
            continue  # a file a documented command writes
        if not (ROOT / m.group(1)).is_file():
            problems.append(f"{source}: {m.group(1)} does not exist")
    if source.endswith(".md"):
        for m in re.finditer(r"\]\(([^)\s]+)\)", without_fences(text)):
            target = m.group(1)
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            doc = (Path(source).parent / file).as_posix() if file else source
            doc = str(Path(doc)) if file else doc
            if not (ROOT / doc).exists():
                problems.append(f"{source}:{line_of(text, m.start())}: link to {target}: {doc} does not exist")
            elif anchor and doc.endswith(".md") and anchor not in {_slug(h) for h in headings(doc)}:
                problems.append(f"{source}:{line_of(text, m.start())}: link to {target}: no such heading in {doc}")
    return problems


def reference_sources() -> dict[str, str]:
    """The docs, and the package's, scripts' and tests' Python files (docstrings and comments cite the docs)."""
    sources = doc_texts()
    for path in [*PY_FILES, *SCRIPTS, *sorted((ROOT / "tests").glob("*.py"))]:
        if path.name != "test_docs_audit.py":  # its broken copies
            sources[rel(path)] = path.read_text(encoding="utf-8")
    return sources


def test_cross_references_name_existing_sections_and_files() -> None:
    problems = [p for source, text in reference_sources().items() for p in check_references(text, source)]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------- options
def _walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, (*path, name))


@functools.cache
def commands() -> dict[tuple[str, ...], click.Command]:
    from patchmmd.cli import main

    return dict(_walk(main))


def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for p in command.params:
        if isinstance(p, click.Option):
            names |= set(p.opts) | set(p.secondary_opts)
    return names


@functools.cache
def script_options() -> frozenset[str]:
    """The options of every script the docs may name (their ``build_parser()``) and of ``torchrun``."""
    from test_docs_commands import _script

    names: set[str] = set()
    parsers = []
    for path in SCRIPTS:
        build = getattr(_script(rel(path)), "build_parser", None)
        if build is not None:
            parsers.append(build())
    try:
        from torch.distributed.run import get_args_parser

        parsers.append(get_args_parser())
    except ImportError:  # a PyTorch build without torch.distributed
        pass
    for parser in parsers:
        for action in parser._actions:
            names |= set(action.option_strings)
    return frozenset(names)


#: Options of other programs the docs name in passing (``git log --format``, ``pip install --upgrade``).
FOREIGN_OPTIONS = {"--format", "--upgrade", "--user", "--no-deps", "--index-url", "--extra-index-url"}
OPTION = re.compile(r"(?<![\w/.=-])(--[a-z][a-z0-9_-]*[a-z0-9])")


def check_options_exist(text: str, source: str) -> list[str]:
    """Every ``--option`` of ``text`` exists somewhere: on a ``patchmmd`` command, a script, torchrun."""
    known = set().union(*(option_names(c) for c in commands().values())) | script_options() | FOREIGN_OPTIONS
    text = re.sub(r"(?m)^\s*#SBATCH.*$", "", text)  # a batch script's own directives
    return [f"{source}:{line_of(text, m.start())}: {m.group(1)} is no option of patchmmd, its scripts or torchrun"
            for m in OPTION.finditer(text) if m.group(1) not in known]


def test_every_option_named_in_the_docs_exists() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_options_exist(text, source)]
    assert not problems, "\n".join(problems)


def _section_command(heading: str) -> tuple[str, ...] | None:
    """The command a heading is about (``## `patchmmd eval suite` `` -> ``("eval", "suite")``), if any."""
    m = re.search(r"`patchmmd ((?:[a-z0-9-]+ ?)+)", heading)
    if not m:
        return None
    words, path = m.group(1).split(), ()
    for w in words:
        if (*path, w) in commands():
            path = (*path, w)
    return path or None


def _named_commands(paragraph: str) -> set[tuple[str, ...]]:
    """The commands a paragraph names: ``patchmmd X [Y]`` or a command name in backticks (`` `compare --map` ``)."""
    named = set()
    for path in commands():
        if not path:
            continue
        words = r"\s+".join(map(re.escape, path))
        if re.search(rf"(?:patchmmd\s+|`){words}(?![\w-])", paragraph):
            named.add(path)
        elif len(path) == 1 and re.search(rf"[`(,]\s*{words}\b(?![-])", paragraph):
            named.add(path)
    return named


def check_section_options(text: str, source: str) -> list[str]:
    """In a section about one command, every ``--option`` is that command's, or one of a command the same
    paragraph names (``--map`` of `` `compare --map` `` in the ``metrics`` section)."""
    problems: list[str] = []
    section: tuple[str, ...] | None = None
    prose = without_fences(text)
    lines = prose.splitlines()
    start = 0
    launcher = False
    paragraphs: list[tuple[int, str, tuple[str, ...] | None, bool]] = []
    for i, line in enumerate([*lines, ""]):
        if line.startswith("#") or not line.strip():
            if start < i:
                paragraphs.append((start + 1, "\n".join(lines[start:i]), section, launcher))
            if line.startswith("#"):
                section, launcher = _section_command(line), "torchrun" in line
            start = i + 1
    for first, paragraph, command, under_torchrun in paragraphs:
        if command is None:
            continue
        allowed = option_names(commands()[command])
        for other in _named_commands(paragraph):
            allowed |= option_names(commands()[other])
        if under_torchrun or "torchrun" in paragraph:  # the launcher's options, where it is the subject
            allowed |= script_options()
        for m in OPTION.finditer(paragraph):
            if m.group(1) not in allowed:
                problems.append(f"{source}:{first + paragraph.count(chr(10), 0, m.start())}: {m.group(1)} is no "
                                f"option of `patchmmd {' '.join(command)}` (the section's command)")
    return problems


def test_options_named_in_a_command_section_are_that_commands() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_section_options(text, source)]
    assert not problems, "\n".join(problems)


def check_inline_commands(text: str, source: str) -> list[str]:
    """An inline span ``patchmmd SUB ... --opt`` names an existing (sub)command and options of it."""
    problems = []
    for line, span in inline_spans(text):
        m = re.match(r"(?:python3? -m )?patchmmd((?: .*)?)$", span)
        if not m:
            continue
        words = m.group(1).split()
        path: tuple[str, ...] = ()
        while words and (*path, words[0]) in commands():
            path = (*path, words.pop(0))
        command = commands()[path]
        if isinstance(command, click.Group) and words and not words[0].startswith("-"):
            problems.append(f"{source}:{line}: `{span}`: no subcommand {words[0]!r} of `patchmmd {' '.join(path)}`")
            continue
        for word in words:
            if word.startswith("-") and not re.fullmatch(r"-?\d.*", word):
                name = word.split("=", 1)[0].rstrip("]")
                if name not in option_names(command) and name not in ("--version",):
                    problems.append(f"{source}:{line}: `{span}`: {name} is no option of "
                                    f"`patchmmd {' '.join(path)}`")
    return problems


def test_inline_patchmmd_spans_name_real_commands_and_options() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_inline_commands(text, source)]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------- Python
def resolve(dotted: str) -> Any:
    """The object a dotted ``patchmmd.x.y`` name refers to (importing modules as needed), else AttributeError."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise AttributeError(dotted)


def check_python_names(text: str, source: str) -> list[str]:
    problems = []
    for m in re.finditer(r"(?<![\w./-])(patchmmd(?:\.[A-Za-z_]\w*)+)", text):
        name = m.group(1)
        if name.endswith(".NAME") or re.search(r"\.(md|py|png|csv|json|c)$", name):
            continue  # a placeholder, or a file name
        try:
            resolve(name)
        except AttributeError:
            problems.append(f"{source}:{line_of(text, m.start())}: {name} does not exist")
    return problems


def test_python_names_in_the_docs_resolve() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_python_names(text, source)]
    assert not problems, "\n".join(problems)


#: Where a bare name of a signature span (``run(dataset, ...)``) is looked up, in order.
NAMESPACES = ("patchmmd", "patchmmd.evaluation", "patchmmd.scoring", "patchmmd.tasks", "patchmmd.tasks.report",
              "patchmmd.io", "patchmmd.runtime", "patchmmd.metrics.registry", "patchmmd.metrics.baselines",
              "patchmmd.theory", "patchmmd.evaluation.suite")


def _lookup(name: str) -> Any:
    if name.startswith("patchmmd."):
        try:
            return resolve(name)
        except AttributeError:
            return None
    for space in NAMESPACES:
        obj: Any = importlib.import_module(space)
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    return None


def _first_alternative(node: ast.expr) -> ast.expr:
    """The documented default of ``"he"/"zero_mean"`` or ``None or PATH``: the first alternative."""
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        node = node.left
    if isinstance(node, ast.BoolOp):
        node = node.values[0]
    return node


def check_signatures(text: str, source: str) -> list[str]:
    """A span ``name(a, b=1, ...)`` naming a function or class of the package names only its parameters; one that
    documents a signature (a bare ``*``, or three or more keywords) gives each literal keyword its default."""
    problems = []
    for line, span in inline_spans(text):
        m = re.match(r"([A-Za-z_][\w.]*)\((.*)\)(?:\.\w+\(\))?$", span)
        if not m or m.group(1).split(".")[0] in ("torch", "numpy", "np", "os", "json"):
            continue
        obj = _lookup(m.group(1))
        if obj is None or not callable(obj) or not getattr(obj, "__module__", "").startswith("patchmmd"):
            continue
        args = m.group(2)
        signature_like = bool(re.search(r"(?:^|,)\s*\*\s*(?:,|$)", args))
        args = re.sub(r"(?:^|,)\s*\*\s*(?=,|$)", "", args).lstrip(", ")
        try:
            call = ast.parse(f"f({args})", mode="eval").body
        except SyntaxError:
            continue
        assert isinstance(call, ast.Call)
        signature_like = signature_like or len(call.keywords) >= 3
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for kw in call.keywords:
            if kw.arg is None:
                continue
            if kw.arg not in params:
                if not takes_any:
                    problems.append(f"{source}:{line}: `{span}`: {m.group(1)} has no parameter {kw.arg!r}")
                continue
            if not signature_like:
                continue
            try:
                documented = ast.literal_eval(_first_alternative(kw.value))
            except ValueError:
                continue  # a placeholder (``PATH``)
            if documented is Ellipsis:
                continue  # ``...``: not stated
            default = params[kw.arg].default
            if default is inspect.Parameter.empty or documented != default:
                problems.append(f"{source}:{line}: `{span}`: {kw.arg}={documented!r}, but {m.group(1)}'s default is "
                                f"{'none' if default is inspect.Parameter.empty else repr(default)}")
    return problems


def test_documented_signatures_match_the_code() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_signatures(text, source)]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------ files, the package map
PATH = re.compile(r"(?<![\w/.-])((?:src/patchmmd|tests|scripts|benchmarks|examples|docs)/[\w./*-]*[\w*])")


def check_paths(text: str, source: str) -> list[str]:
    """Paths of the repository named in ``text`` exist (a glob such as ``tests/test_theory_*.py`` matches)."""
    problems = []
    for m in PATH.finditer(text):
        path = m.group(1).rstrip(".")
        if text[m.end() : m.end() + 1] == "<":
            continue  # a pattern (``tests/test_<module>.py``)
        if path.startswith(("benchmarks/results/", "docs/x.md")):
            continue  # outputs the docs' commands write
        found = list(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
        if not found:
            problems.append(f"{source}:{line_of(text, m.start())}: {path} does not exist")
            continue
        test = re.match(r"::(\w+)", text[m.end() :])  # tests/test_x.py::test_name
        if test and not re.search(rf"(?m)^\s*(?:async )?def {test.group(1)}\(", found[0].read_text(encoding="utf-8")):
            problems.append(f"{source}:{line_of(text, m.start())}: {path} has no {test.group(1)}")
    return problems


def test_paths_named_in_the_docs_exist() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_paths(text, source)]
    assert not problems, "\n".join(problems)


def architecture_tree(text: str) -> list[str]:
    """The paths (relative to src/patchmmd) of the tree in docs/architecture.md's first code block: each entry's
    name (``core/``, ``mmd.py``, ``lpips.py, dists.py``) under its folder, and the files a folder's description
    lists (``stats.py, datasets.py``)."""
    block = text.split("```", 2)[1]
    paths: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in block.splitlines()[1:]:
        m = re.match(r"([│ ]*)[├└]── ([^\s,]+(?:, [^\s,]+)*)\s*(.*)", line)
        if not m:
            if stack:  # a description continued: files it names belong to the last folder
                paths += [f"{stack[-1][1]}{f}" for f in re.findall(r"\b(\w+\.py)\b", line)]
            continue
        depth = len(m.group(1)) // 4
        stack = [s for s in stack if s[0] < depth]
        parent = stack[-1][1] if stack else ""
        for name in m.group(2).split(", "):
            paths.append(parent + name)
            if name.endswith("/"):
                stack.append((depth, parent + name))
                paths += [f"{parent}{name}{f}" for f in re.findall(r"\b(\w+\.py)\b", m.group(3))]
            elif name.endswith(".py") and stack and stack[-1][1] == parent:
                # "builtin.py  the package's own distances;  theory.py: ..." names a sibling
                paths += [f"{parent}{f}" for f in re.findall(r"\b(\w+\.py)\b", m.group(3))]
    return paths


def check_architecture(text: str) -> list[str]:
    named = architecture_tree(text)
    problems = [f"docs/architecture.md: {p} does not exist in src/patchmmd" for p in named
                if not (SRC / p).exists()]
    listed = {p.rstrip("/") for p in named}
    for path in PY_FILES:
        module = path.relative_to(SRC).as_posix()
        if module.startswith("cli/") or (path.name == "__init__.py" and module != "__init__.py"):
            continue  # cli/ is described as a whole; a package's __init__ by its folder
        if module not in listed:
            problems.append(f"docs/architecture.md: src/patchmmd/{module} is not in the package map")
    return problems


def test_architecture_map_matches_the_package() -> None:
    problems = check_architecture((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_architecture_rules_hold() -> None:
    """docs/architecture.md, "Rules the layout keeps": ``core/`` imports nothing of the package outside ``core/``,
    ``_native/`` and ``_autograd.py``."""
    problems = []
    for path in sorted((SRC / "core").glob("*.py")):
        for m in re.finditer(r"(?m)^\s*from \.\.(\w+)", path.read_text(encoding="utf-8")):
            if m.group(1) not in ("_native", "_autograd"):
                problems.append(f"{rel(path)} imports patchmmd.{m.group(1)}")
    assert not problems, "\n".join(problems)


def test_library_errors_name_no_command_line_flags() -> None:
    """docs/architecture.md, "Rules the layout keeps": library errors say what is wrong in the library's terms
    (argument names); only the CLI knows flag names. Every string in a ``raise`` outside ``cli/`` is checked (a
    loss's, the GIM crop's and the evaluator's messages named ``--weights`` and ``--size``)."""
    problems = []
    for path in PY_FILES:
        if path.parent.name == "cli" or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for sub in ast.walk(node.exc):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str) \
                            and re.search(r"(^|[\s\"'(`/])--[a-z]", sub.value):
                        problems.append(f"{rel(path)}:{node.lineno}: {sub.value.strip()[:80]!r}")
    assert not problems, "\n".join(problems)


def test_no_library_module_imports_the_command_line() -> None:
    """docs/architecture.md, "Rules the layout keeps": the command line is the top of the package; nothing
    outside ``cli/`` (and the ``__main__`` entry point) imports it or click, so the library runs without the
    ``cli`` extra (``run_suite`` once parsed its candidates with the command line's option parser)."""
    problems = []
    for path in PY_FILES:
        if path.parent.name == "cli" or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or "", *(f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names)]
                     if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] == "click" or "cli" in name.split("."):
                    problems.append(f"{rel(path)}:{node.lineno} imports {name}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------- environment variables, extras, losses
def env_vars_read() -> set[str]:
    found = set()
    for path in PY_FILES:
        found |= set(re.findall(r"\"(PATCHMMD_[A-Z_]+)\"", path.read_text(encoding="utf-8")))
    return found


def check_env_vars(texts: dict[str, str]) -> list[str]:
    read = env_vars_read()
    named = {m.group(0): source for source, text in texts.items() for m in re.finditer(r"PATCHMMD_[A-Z_]+", text)}
    problems = [f"{source}: {name} is not read by the package" for name, source in named.items() if name not in read]
    problems += [f"{name} is read by the package but no page of the docs names it"
                 for name in sorted(read - set(named))]
    return problems


def test_environment_variables_match() -> None:
    problems = check_env_vars(doc_texts())
    assert not problems, "\n".join(problems)


def check_extras(text: str, source: str) -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    problems = []
    for m in re.finditer(r"(?:patchmmd|\.)\[([\w,-]+)\]", text):
        for extra in m.group(1).split(","):
            if extra not in extras:
                problems.append(f"{source}:{line_of(text, m.start())}: no extra {extra!r} in pyproject.toml "
                                f"({', '.join(sorted(extras))})")
    return problems


def test_extras_named_in_the_docs_exist() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_extras(text, source)]
    assert not problems, "\n".join(problems)


def check_loss_list(text: str) -> list[str]:
    """docs/tasks.md's paragraph on ``--loss`` names every loss of :data:`patchmmd.tasks.losses.LOSS_NAMES` and
    no other."""
    from patchmmd.metrics.registry import metric_names
    from patchmmd.tasks.losses import LOSS_NAMES

    paragraph = next(p for p in text.split("\n\n") if p.startswith("`--loss` is one of"))
    # the names in backticks that are losses or metrics (not `grad`, the column that marks them)
    named = set(re.findall(r"`([a-z][a-z0-9-]*)`", paragraph)) & {*LOSS_NAMES, *metric_names()}
    problems = [f"docs/tasks.md: the --loss paragraph does not name {n!r}" for n in LOSS_NAMES if n not in named]
    problems += [f"docs/tasks.md: the --loss paragraph names {n!r}, which is no loss" for n in sorted(named)
                 if n not in LOSS_NAMES]
    return problems


def test_loss_names_of_tasks_md_match() -> None:
    problems = check_loss_list((ROOT / "docs" / "tasks.md").read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------- Sphinx references in the package's docstrings
ROLE = re.compile(r":(?:func|class|mod|data|attr|meth|exc|obj):`!?~?([^`<]*<)?([^`>]+)>?`")


def _module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(SRC).with_suffix("").parts
    name = ".".join(("patchmmd", *parts)).removesuffix(".__init__")
    return name, path.name == "__init__.py"


def check_roles(text: str, source: str, module_name: str, is_package: bool) -> list[str]:
    """Every ``:func:`x```, ``:class:`~.mod.C```, ``:attr:`y``` of a module's docstrings names something: in the
    package (absolute or relative to the module), a name of the module, or an attribute, method or local function
    the module defines (a class's docstring names its own members bare)."""
    module = importlib.import_module(module_name)
    problems = []
    for m in ROLE.finditer(text):
        target = m.group(2).removesuffix("()")
        if target.startswith("."):
            dots = len(target) - len(target.lstrip("."))
            package = module_name if is_package else module_name.rsplit(".", 1)[0]
            for _ in range(dots - 1):
                package = package.rsplit(".", 1)[0]
            target = f"{package}.{target.lstrip('.')}"
        first, last = target.split(".")[0], target.split(".")[-1]
        foreign = first not in vars(module) and importlib.util.find_spec(first) is not None
        if first != "patchmmd" and (hasattr(builtins, first) or foreign):
            continue  # torch.…, os.…, a builtin: not this package's to check
        try:
            if first == "patchmmd":
                resolve(target)
            else:
                obj: Any = module
                for part in target.split("."):
                    obj = getattr(obj, part)
            continue
        except AttributeError:
            pass
        # a member named bare inside its class's docstring, a local function, a dataclass field, an instance attribute
        if re.search(rf"(?m)(?:\bdef {last}\(|\bself\.{last}\b|^\s+{last}\s*[:=]|\bimport .*\b{last}\b)", text):
            continue
        problems.append(f"{source}:{line_of(text, m.start())}: {m.group(0)} names nothing")
    return problems


def test_docstring_references_resolve() -> None:
    problems = []
    for path in PY_FILES:
        name, is_package = _module_name(path)
        problems += check_roles(path.read_text(encoding="utf-8"), rel(path), name, is_package)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------ commands in the package's docstrings
def docstring_commands() -> list[Any]:
    """The ``patchmmd ...`` / ``torchrun ...`` lines of the package's docstrings (the click help's examples), read
    as one code block each."""
    found = []
    for path in PY_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            m = re.match(r"\s*(?:\$ )?(?:patchmmd |python3? -m patchmmd |torchrun )(\S+)", line)
            if m and (line.lstrip().startswith("torchrun") or (m.group(1),) in commands()):
                (command,) = extract(f"```\n{line.strip()}\n```\n", f"{rel(path)}")[0] or (None,)
                if command is not None:
                    found.append((f"{rel(path)}:{number}", command))
    return found


DOCSTRING_COMMANDS = docstring_commands()


@pytest.mark.parametrize("where,command", DOCSTRING_COMMANDS, ids=[w for w, _ in DOCSTRING_COMMANDS])
@pytest.mark.usefixtures("existing_paths")
def test_commands_in_docstrings_parse(where: str, command: Any) -> None:
    check(command)


def test_docstring_commands_are_found() -> None:
    assert len(DOCSTRING_COMMANDS) >= 8  # compare's, score's and gim's help examples


# ------------------------------------------------------------------------------- the checks can fail
def _page(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def _broken(doc: str, old: str, new: str) -> str:
    text = _page(doc)
    assert old in text, f"{doc} no longer holds {old!r}: update this copy"
    return text.replace(old, new, 1)


BROKEN: dict[str, tuple[Callable[[], list[str]], str]] = {
    "section number": (lambda: check_references(_broken("README.md", "docs/method.md §3.3", "docs/method.md §3.7"),
                                                "README.md"), "§3.7"),
    "section title": (lambda: check_references(_broken("README.md", '"Seed spread"', '"Seed spreads"'),
                                               "README.md"), "Seed spreads"),
    "link anchor": (lambda: check_references(_broken("docs/cli.md", "#the-dev-benchmark-patchmmd-eval-suite",
                                                     "#the-dev-benchmark"), "docs/cli.md"), "no such heading"),
    "linked file": (lambda: check_references(_broken("README.md", "(docs/tasks.md)", "(docs/task.md)"),
                                             "README.md"), "docs/task.md"),
    "docstring reference": (lambda: check_references('"""See docs/cli.md,\n    "Exit codes"."""', "x.py"),
                            "Exit codes"),
    "option anywhere": (lambda: check_options_exist(_broken("docs/cli.md", "`--retry-errors`", "`--retry-error`"),
                                                    "docs/cli.md"), "--retry-error"),
    "option of the section's command": (
        lambda: check_section_options(_broken("docs/cli.md", "`--max-pixels N`** (default", "`--max-tiles N`** (def"),
                                      "docs/cli.md"), "--max-tiles is no option of `patchmmd compare`"),
    "inline command": (lambda: check_inline_commands(_broken("docs/cli.md", "`patchmmd theory --out DIR`",
                                                             "`patchmmd theory --outdir DIR`"), "docs/cli.md"),
                       "--outdir"),
    "inline subcommand": (lambda: check_inline_commands(_broken("docs/evaluation.md", "`patchmmd eval jnd ROOT`",
                                                                "`patchmmd eval jdn ROOT`"), "docs/evaluation.md"),
                          "'jdn'"),
    "python name": (lambda: check_python_names(_broken("docs/tasks.md", "patchmmd.tasks.superres.degrade",
                                                       "patchmmd.tasks.superres.degrad"), "docs/tasks.md"),
                    "degrad does not exist"),
    "signature default": (lambda: check_signatures(_broken("docs/evaluation.md", "batch_size=8,", "batch_size=16,"),
                                                   "docs/evaluation.md"), "batch_size=16"),
    "signature parameter": (lambda: check_signatures(_broken("docs/theory.md", "normalize=True", "normalise=True"),
                                                     "docs/theory.md"), "no parameter 'normalise'"),
    "path": (lambda: check_paths(_broken("docs/method.md", "tests/test_shift_tolerance.py",
                                         "tests/test_shift_tolerant.py"), "docs/method.md"), "test_shift_tolerant"),
    "architecture: a file that is not there": (
        lambda: check_architecture(_broken("docs/architecture.md", "│   ├── rff.py", "│   ├── rfff.py")), "rfff.py"),
    "architecture: a module left out": (
        lambda: check_architecture(_broken("docs/architecture.md", "│   ├── scale.py", "│   ├── (gone)")),
        "core/scale.py is not in the package map"),
    "environment variable": (lambda: check_env_vars({"README.md": _broken("README.md", "PATCHMMD_NATIVE=0",
                                                                          "PATCHMMD_NATIVES=0")}), "PATCHMMD_NATIVES"),
    "extra": (lambda: check_extras(_broken("README.md", '".[test]"', '".[tests]"'), "README.md"), "'tests'"),
    "test name": (lambda: check_paths(_broken("docs/performance.md", "::test_half_precision_inputs",
                                              "::test_half_precision_input"), "docs/performance.md"),
                  "has no test_half_precision_input"),
    "docstring role": (lambda: check_roles(_page("src/patchmmd/scoring/jobs.py").replace(
        ":attr:`PairedJob.only_ref`", ":attr:`PairedJob.only_refs`", 1), "jobs.py", "patchmmd.scoring.jobs", False),
                       "PairedJob.only_refs"),
    "docstring role, relative": (lambda: check_roles(_page("src/patchmmd/scoring/__init__.py").replace(
        ":mod:`.journal`", ":mod:`.journals`", 1), "__init__.py", "patchmmd.scoring", True), ".journals"),
    "loss list: one left out": (lambda: check_loss_list(_broken("docs/tasks.md", "`random-vgg`", "`random-vgg16`")),
                                "does not name 'random-vgg'"),
    "loss list: not a loss": (lambda: check_loss_list(_broken("docs/tasks.md", "`local`", "`psnr`")),
                              "names 'psnr', which is no loss"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_copy_fails(name: str) -> None:
    checker, expected = BROKEN[name]
    problems = checker()
    assert any(expected in p for p in problems), problems


@pytest.mark.usefixtures("existing_paths")
def test_a_broken_docstring_command_fails() -> None:
    (command,) = extract("```\npatchmmd compare ref.png test.png --metric l2 --jsn\n```\n", "x.py")[0]
    with pytest.raises(NotParsed, match="--jsn"):
        check(command)
