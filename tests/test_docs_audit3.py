"""docs-audit3: claims of README.md and docs/ that a third documentation audit checked against the code.

tests/test_docs_audit.py checks cross-page references (a page with a quoted title, ``§N``, links), options, signatures
and paths; tests/test_docs_audit2.py single claims. This module adds what neither reads:

* a page's references to its own sections, ``"Title" above`` / ``"Title" below``: the section (a heading or a
  bold run-in label) or the quoted phrase exists on the page, on the side the reference says;
* option defaults the prose states (``--metric NAME`` (default ``mmdpp``), ``--seed``, default 0,
  (``--init mean``, default)) and the synopses of docs/cli.md show (``[--out patchmmd-demo]``,
  ``[--device auto|cpu|...]``, the first alternative being the default) are the command's defaults;
* the MMD++ options docs/method.md §3 writes as ``name=value`` (``base_size = 128``, ``weight_ssim=(9.93, 29.1)``)
  are the values of the presets each subsection describes.

Each checker returns a list of problems; ``test_a_broken_copy_fails`` plants a mistake in a copy of a real passage
and shows that the checker finds it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator

import click
import pytest

from test_docs_audit import ROOT, _broken, commands, doc_texts, line_of, without_fences


def _flat(text: str) -> str:
    return " ".join(text.replace("`", "").split())


# ------------------------------------------------------------------------------ "Title" above / below
def _anchors(text: str) -> list[tuple[int, str]]:
    """(offset, title) of each heading and bold run-in label of a page (fenced blocks left out)."""
    prose = without_fences(text)
    found = [(m.start(), m.group(1)) for m in re.finditer(r"(?m)^#{1,6}\s+(.*?)\s*#*\s*$", prose)]
    found += [(m.start(), m.group(1).rstrip(".:"))
              for m in re.finditer(r"(?m)^\s*(?:[-*]\s+)?\*\*([^*]+)\*\*", prose)]
    return [(pos, _flat(title)) for pos, title in found]


SIDE_REFERENCE = re.compile(r'"([^"]{2,120})"\s+(above|below)\b')


def check_side_references(text: str, source: str) -> list[str]:
    """Every ``"Title" above|below`` names a section of the page, or a phrase of it, on that side."""
    prose = without_fences(text)
    anchors = _anchors(text)
    problems = []
    for m in SIDE_REFERENCE.finditer(prose):
        title, side, at = _flat(m.group(1)), m.group(2), m.start()

        def on_side(pos: int, side: str = side, at: int = at) -> bool:
            return pos < at if side == "above" else pos > at

        places = [pos for pos, name in anchors if name == title or name.startswith(title)]
        if not places:  # a phrase quoted from the page
            words = r"`?\s+`?".join(re.escape(w) for w in title.split())
            places = [p.start() for p in re.finditer(words, prose) if not m.start() <= p.start() < m.end()]
        where = f"{source}:{line_of(prose, at)}: {m.group(0)!r}"
        if not places:
            problems.append(f"{where}: the page has no such section or phrase")
        elif not any(on_side(p) for p in places):
            problems.append(f"{where}: it is {'below' if side == 'above' else 'above'}, not {side}")
    return problems


def test_references_to_sections_of_the_same_page_hold() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_side_references(text, source)]
    assert not problems, "\n".join(problems)


def test_side_references_are_found() -> None:
    found = sum(len(SIDE_REFERENCE.findall(without_fences(t))) for t in doc_texts().values())
    assert found >= 10  # performance.md, distributed.md, tasks.md and development-log.md use them


# ------------------------------------------------------------------------------------ option defaults
def _defaults(option: str) -> set[str]:
    """The defaults of ``option`` on every command that has it: click's, and the one its help states
    (``default: mmdpp`` where the click default is unset)."""
    values: set[str] = set()
    for command in commands().values():
        for p in command.params:
            if not isinstance(p, click.Option) or option not in p.opts:
                continue
            default = p.default
            if default is not None and not p.is_flag and not p.multiple and "Sentinel" not in repr(default):
                values.add(str(default))
            values |= {v.rstrip(".") for v in re.findall(r"default:? ([^\s);\]]+)", p.help or "")}
    return values


#: ``--opt ...`` (default ``V``) / ``--opt``, default 0 / (``--opt V``, default): the option and the value.
PROSE_DEFAULT = re.compile(
    r"`(--[a-z0-9-]+)(?: [^`]*)?`\**,? \(?default:? (?:`([^`]+)`|(\d[\d.]*))"
    r"|`(--[a-z0-9-]+) ([a-z0-9][^`\s]*)`,? \(?default\b"
)


def _stated_defaults(text: str) -> Iterator[tuple[int, str, str]]:
    prose = without_fences(text)
    for m in PROSE_DEFAULT.finditer(prose):
        option = m.group(1) or m.group(4)
        value = m.group(2) or m.group(3) or m.group(5)
        yield line_of(prose, m.start()), option, value


def check_prose_defaults(text: str, source: str) -> list[str]:
    problems = []
    for line, option, value in _stated_defaults(text):
        known = _defaults(option)
        if known and value.rstrip("/") not in known:  # options of the scripts are not click's: not read here
            problems.append(f"{source}:{line}: {option} (default {value}): the command's default is "
                            f"{' or '.join(sorted(known))}")
    return problems


def test_option_defaults_stated_in_the_prose_are_the_commands() -> None:
    problems = [p for source, text in doc_texts().items() for p in check_prose_defaults(text, source)]
    assert not problems, "\n".join(problems)


def test_prose_defaults_are_found() -> None:
    found = {option for text in doc_texts().values() for _, option, _ in _stated_defaults(text)}
    assert {"--metric", "--max-pixels", "--seed", "--size", "--init", "--eval-distances"} <= found, found


#: ``[--opt VALUE]`` or ``[--opt A|B|C]`` of a synopsis; a value starting with a capital (N, DIR, OUT.png) is a
#: placeholder.
SYNOPSIS_OPTION = re.compile(r'\[(--[a-z0-9-]+) ("[^"]+"|[a-z0-9][^\]\s|]*)')


def check_synopsis_defaults(text: str, source: str) -> list[str]:
    """In the indented ``patchmmd X ...`` synopses, a value shown for an optional option is its default."""
    problems = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r" {4}patchmmd ([a-z0-9-]+)", line)
        if not m or (m.group(1),) not in commands():
            continue
        command = commands()[(m.group(1),)]
        block = [line]
        for more in lines[i + 1 :]:
            if not more.startswith("     "):
                break
            block.append(more)
        for o in SYNOPSIS_OPTION.finditer("\n".join(block)):
            option, shown = o.group(1), o.group(2).strip('"')
            params = [p for p in command.params if option in getattr(p, "opts", ())]
            if params and str(params[0].default) != shown:
                problems.append(f"{source}:{i + 1}: [{option} {shown}...]: the default of `patchmmd {m.group(1)}` "
                                f"{option} is {params[0].default!s}")
    return problems


def test_synopsis_values_are_the_defaults() -> None:
    text = (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    assert len(SYNOPSIS_OPTION.findall(text)) >= 5  # demo's four, compare's --device
    problems = check_synopsis_defaults(text, "docs/cli.md")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------- docs/method.md §3: the presets' values
#: The presets each subsection of docs/method.md §3 describes (§3.1 also states the scale rule of the default).
METHOD_PRESETS = {"3.1": ("followup", "pixelwise", "default"), "3.2": ("default",), "3.3": ("loss", "default")}
#: ``name=value`` spans that are not a preset's value, with why.
NOT_A_PRESET = {("weight_mmd", 20): "what scripts/calibrate_weights.py prints with 128 features; the preset keeps 19.9"}


def check_method_options(text: str) -> list[str]:
    from patchmmd.core.mmdpp import OPTION_NAMES, PRESETS

    problems = []
    prose = without_fences(text)
    sections = [(m.start(), m.group(1)) for m in re.finditer(r"(?m)^###? (3\.\d)\b", prose)]
    for m in re.finditer(r"`([a-z_]+) ?= ?([^`]+)`", prose):
        name, literal = m.group(1), m.group(2)
        section = next((s for pos, s in reversed(sections) if pos < m.start()), None)
        if name not in OPTION_NAMES or section not in METHOD_PRESETS:
            continue
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            problems.append(f"docs/method.md:{line_of(prose, m.start())}: `{name}={literal}` is no Python value")
            continue
        if (name, value) in NOT_A_PRESET:
            continue
        presets = METHOD_PRESETS[section]
        actual = {p: getattr(PRESETS[p], name) for p in presets}
        if not any(v == value or (isinstance(v, tuple) and list(v) == value) for v in actual.values()):
            problems.append(f"docs/method.md:{line_of(prose, m.start())}: §{section} says `{name}={literal}`; "
                            f"the presets it describes have {actual}")
    return problems


def test_method_md_states_the_presets_values() -> None:
    text = (ROOT / "docs/method.md").read_text(encoding="utf-8")
    problems = check_method_options(text)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------- the checks can fail
BROKEN: dict[str, tuple[Callable[[], list[str]], str]] = {
    "section on the wrong side": (
        lambda: check_side_references(_broken("docs/performance.md", '"torch.compile" above', '"torch.compile" below'),
                                      "docs/performance.md"), "it is above, not below"),
    "section that is not there": (
        lambda: check_side_references(_broken("docs/tasks.md", '"Trained networks" below', '"Trained models" below'),
                                      "docs/tasks.md"), "no such section or phrase"),
    "prose default": (lambda: check_prose_defaults(_broken("docs/tasks.md", "`--size` (default 64)",
                                                           "`--size` (default 128)"), "docs/tasks.md"),
                      "--size (default 128)"),
    "prose default, value in the span": (
        lambda: check_prose_defaults(_broken("docs/tasks.md", "(`--init mean`, default)", "(`--init noise`, default)"),
                                     "docs/tasks.md"), "--init (default noise)"),
    "synopsis default": (lambda: check_synopsis_defaults(_broken("docs/cli.md", "[--out patchmmd-demo]",
                                                                 "[--out demo-out]"), "docs/cli.md"),
                         "--out is patchmmd-demo"),
    "synopsis alternatives": (lambda: check_synopsis_defaults(_broken("docs/cli.md", "[--image astronaut|chelsea",
                                                                      "[--image chelsea|astronaut"), "docs/cli.md"),
                              "--image is astronaut"),
    "method.md value": (lambda: check_method_options(_broken("docs/method.md", "`weight_ssim=(9.93, 29.1)`",
                                                             "`weight_ssim=(9.93, 29.2)`")), "weight_ssim"),
    "method.md scale rule": (lambda: check_method_options(_broken("docs/method.md", "`min_size = 48`",
                                                                  "`min_size = 64`")), "min_size"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_copy_fails(name: str) -> None:
    checker, expected = BROKEN[name]
    problems = checker()
    assert any(expected in p for p in problems), problems
