"""Shared pieces of the subcommands: options for metric, metric options, device, image mode and batch
size, and the policies for outputs that already exist: :func:`prepare_output_dir` for every command that
writes a folder, :func:`check_output_path` for one that writes a file.

They are generic: any subcommand can decorate itself with them. Validation errors are
:class:`click.BadParameter` / :class:`click.UsageError`, so click prints them with the option's name.
Any other exception a command lets through (a :class:`click.ClickException` included) is turned into one line
``patchmmd: error: ...`` by :class:`ErrorMappingGroup` (the group of every command), never a traceback unless
``PATCHMMD_DEBUG=1``.

Example:
    >>> parse_metric_options(("num_scales=3", "features=iid", "scale_weights=[1, 2, 1]", "base_size=none"))
    {'num_scales': 3, 'features': 'iid', 'scale_weights': [1, 2, 1], 'base_size': None}
"""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ..scoring import MetricSetupError

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable: set to 1 to get a traceback instead of the one-line error (for bug reports).
DEBUG_ENV = "PATCHMMD_DEBUG"


class CommandError(click.ClickException):
    """An error inside a command, shown as one line ``patchmmd: error: ...`` (exit status 1)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"patchmmd: error: {self.format_message()}", err=True, file=file)


def one_line_error(e: BaseException) -> CommandError:
    """``e`` as a :class:`CommandError`: its message on one line, with the exception's type unless it is a
    plain ``ValueError`` / ``TypeError`` (whose messages already say what was wrong).

    Example:
        >>> one_line_error(RuntimeError("bad  thing")).format_message()
        'bad thing (RuntimeError)'
    """
    text = " ".join(str(e).split()) or "no message"
    if type(e) not in (ValueError, TypeError):
        text = f"{text} ({type(e).__name__})"
    return CommandError(text)


def debug_enabled() -> bool:
    """Whether ``$PATCHMMD_DEBUG`` asks for tracebacks (``1``, ``true``, ``yes``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def repeated_options(command: click.Command, ctx: click.Context, args: Iterable[str]) -> list[tuple[str, list[str]]]:
    """The single-valued options of ``command`` that ``args`` give more than once with different values, as
    ``(option, values)``: click keeps the last value and drops the others without a word, so
    ``compare a.png b.png -m psnr -m ssim`` would print one number, SSIM's. Flags, counters and repeatable
    options are not counted; the same value given twice is harmless and not reported.

    The scan reads the command line as click does: ``--name value``, ``--name=value``, ``-n value``, ``-nvalue``,
    short flags grouped before a short option (``-qn value``, ``-qnvalue``), up to ``--``; a token that is another
    option's value is skipped.

    Example:
        >>> cmd = click.Command("c", params=[click.Option(["--metric", "-m"]), click.Option(["--out"]),
        ...                                  click.Option(["-o"], multiple=True), click.Option(["-q"], is_flag=True)])
        >>> repeated_options(cmd, click.Context(cmd), ["-m", "psnr", "-o", "-m", "--metric=ssim", "-mpsnr"])
        [('--metric', ['psnr', 'ssim', 'psnr'])]
        >>> repeated_options(cmd, click.Context(cmd), ["-qm", "psnr", "-m", "l2", "-qqmssim"])
        [('--metric', ['psnr', 'l2', 'ssim'])]
        >>> repeated_options(cmd, click.Context(cmd), ["--out", "x", "--out", "x", "-o", "a", "-o", "b"])
        []
    """
    takes_value: dict[str, click.Option] = {}
    flags: set[str] = set()
    for p in command.get_params(ctx):
        if isinstance(p, click.Option) and not p.is_flag and not p.count:
            takes_value.update(dict.fromkeys(p.opts, p))
        elif isinstance(p, click.Option):
            flags.update(p.opts, p.secondary_opts)
    given: dict[click.Option, list[str]] = {}
    tokens = list(args)
    i = 0
    while i < len(tokens):
        token, value = tokens[i], None
        if token == "--":
            break
        if token.startswith("--") and "=" in token:
            token, value = token.split("=", 1)
        elif token.startswith("-") and not token.startswith("--") and len(token) > 2:
            token, value = _short_option_in_group(token, takes_value, flags)
        option = takes_value.get(token)
        if option is not None:
            if value is None:
                i += 1
                value = tokens[i] if i < len(tokens) else None
            if not option.multiple and value is not None:
                given.setdefault(option, []).append(value)
        i += 1
    return [(max(o.opts, key=len), values) for o, values in given.items() if len(set(values)) > 1]


def _short_option_in_group(token: str, takes_value: dict[str, click.Option], flags: set[str]) -> tuple[str, str | None]:
    """The short option taking a value in a group of short options, as click reads the group: flags first, then
    one option whose value is the rest of the token (``-qmpsnr``: ``("-m", "psnr")``), or the next token when
    nothing is left (``-qm``: ``("-m", None)``); the token itself when the group has no such option.

    Example:
        >>> _short_option_in_group("-qbm", {"-m": click.Option(["-m"])}, {"-q", "-b"})
        ('-m', None)
    """
    for j in range(1, len(token)):
        name = "-" + token[j]
        if name in takes_value:
            return name, token[j + 1 :] or None
        if name not in flags:
            break
    return token, None


class SingleValueCommand(click.Command):
    """A command that refuses a single-valued option given twice with different values (a usage error naming
    it, see :func:`repeated_options`) instead of silently keeping the last one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for option, values in repeated_options(self, ctx, args):
            raise click.UsageError(
                f"{option} was given {len(values)} times ({', '.join(values)}) but takes one value; give it once",
                ctx=ctx,
            )
        return super().parse_args(ctx, args)


#: The exit status after Ctrl-C (128 + SIGINT), in every command.
INTERRUPTED = 130


class ErrorMappingGroup(click.Group):
    """A click group whose commands never end in a traceback: any exception other than a usage error, an exit
    or an interrupt becomes one line ``patchmmd: error: ...`` and exit status 1: a :class:`click.ClickException`
    a command raises, and any other exception (``PATCHMMD_DEBUG=1`` re-raises those, traceback and all).
    Usage errors (exit status 2) keep click's form: the usage line, a hint to ``--help`` and ``Error: ...``.
    Ctrl-C (a :class:`KeyboardInterrupt` a command lets through) ends in ``interrupted`` and exit status 130
    (``score`` says what it saved, with the same status).
    Its commands are :class:`SingleValueCommand` s, its subgroups groups of this class."""

    command_class = SingleValueCommand
    group_class = type  # subgroups (``eval``) are ErrorMappingGroups too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C: exit status 130 in every command (click says "Aborted!", status 1)
            click.echo("\ninterrupted", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
        except (CommandError, click.exceptions.UsageError, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # the reader of stdout went away (`patchmmd metrics | head`): click ends quietly
            raise
        except click.exceptions.ClickException as e:  # a failure a command reports (exit status 1): one line
            if e.exit_code != CommandError.exit_code:
                raise
            raise CommandError(" ".join(e.format_message().splitlines())) from e
        except Exception as e:
            if debug_enabled():
                raise
            raise one_line_error(e) from e


class InputFile(click.Path):
    """An input file argument (an image, a labels CSV): a path that exists but is not a regular file (a folder, a
    FIFO, a device, a socket) is a usage error (exit status 2), said before any work and without opening it (a FIFO
    would block). A path that does not exist is let through: the command reports it when it reads the file, like a
    file that cannot be read (exit status 1; see docs/cli.md, "Exit statuses").

    Example:
        >>> import tempfile
        >>> InputFile().convert(tempfile.gettempdir(), None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        click.exceptions.BadParameter: File '...' is a directory.
    """

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=str)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)  # a folder: click's "is a directory"
        if _mode_if_not_a_file(path) is not None:
            self.fail(f"File {click.format_filename(path)!r} is not a regular file (a FIFO, a device or a socket).",
                      param, ctx)
        return path


def _mode_if_not_a_file(path: str | bytes | os.PathLike[str]) -> int | None:
    """The ``st_mode`` of ``path`` if it exists but is not a regular file (a folder, a FIFO, a device, a socket);
    ``None`` if it is one, or is missing (or a name the OS refuses): the reader reports those."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else mode


def check_input_file(path: str | os.PathLike[str], param_hint: str) -> None:
    """:class:`InputFile`'s rule for a path that is not a click argument of that type (``gim``'s IMAGES, which may
    also be shipped photo names): a path that exists but is not a regular file is a usage error."""
    mode = _mode_if_not_a_file(path)
    if mode is None:
        return
    if stat.S_ISDIR(mode):
        raise click.BadParameter(f"{os.fsdecode(path)!r} is a folder; give an image file", param_hint=param_hint)
    raise click.BadParameter(f"{os.fsdecode(path)!r} is not a regular file (a FIFO, a device or a socket)",
                             param_hint=param_hint)


class OutputFile(click.Path):
    """An output file option (``score --out``, ``compare --map``): ``-`` is a usage error. Other tools read ``-``
    as standard output; these commands write a file (``score`` keeps its journal and lock next to it), and taken
    as a name it made a file called ``-`` while the command said it wrote "to -". ``./-`` names such a file.

    Example:
        >>> OutputFile().convert("-", None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        click.exceptions.BadParameter: '-' (standard output) is not supported: ...
    """

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value == "-":
            self.fail("'-' (standard output) is not supported: the command writes a file; give its name "
                      "(./- for a file named '-')", param, ctx)
        return super().convert(value, param, ctx)


class FinitePositiveFloat(click.ParamType):
    """A finite number > 0 (``nan``, ``inf``, ``0`` and negatives are usage errors; click's
    ``FloatRange(min=0, min_open=True)`` lets ``nan`` and ``inf`` through).

    Example:
        >>> FinitePositiveFloat().convert("2e-3", None, None)
        0.002
    """

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"expected a finite number > 0, got {value!r}", param, ctx)
        return number


#: The type of every ``--seed`` option: the library's seed range, ``0 <= seed < 2**63`` (as for a metric's
#: ``-o seed=N``, :data:`patchmmd.core.validation.SEED_LIMIT`): a seed out of it is a usage error, not a failure
#: deep in a run.
SEED = click.IntRange(min=0, max=2**63 - 1)


def shown(path: str | os.PathLike[str]) -> str:
    """A file name as a message shows it, on one plain line (:func:`patchmmd.scoring.printable_text`): a line break
    as ``\\n``, a terminal's escape character as ``\\x1b``, bytes that are not UTF-8 as ``\\xNN``.

    Example:
        >>> shown("a\\nb.png")
        'a\\\\nb.png'
    """
    from ..scoring import printable_text

    return printable_text(os.fspath(path))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` are one file or folder (another spelling, a hard link, a symbolic link to it);
    ``False`` when either does not exist or cannot be looked at.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "x.png").write_bytes(b"x")
        >>> same_file(d / "x.png", d / "." / "x.png"), same_file(d / "x.png", d / "y.png")
        (True, False)
    """
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def json_line(obj: Any) -> str:
    """``obj`` as strict JSON on one line: a float that is not finite is written as ``null`` (JSON has no NaN),
    as :func:`patchmmd.evaluation.report.json_text` does for the report files (which it indents).

    Example:
        >>> json_line({"distance": float("nan"), "shape": [3, float("inf")]})
        '{"distance": null, "shape": [3, null]}'
    """
    from ..evaluation.report import json_text

    return json_text(obj, indent=None).rstrip("\n")


def _check_metric(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..metrics.registry import get_spec

    try:
        get_spec(value)
    except ValueError as e:
        raise click.BadParameter(f"{e} (see `patchmmd metrics`)", ctx=ctx, param=param) from None
    return value


def metric_option(default: str = "mmdpp") -> Callable[[F], F]:
    """``--metric NAME`` validated against the registry (an unknown name lists the valid ones)."""
    return click.option(
        "--metric", "-m", default=default, show_default=True, callback=_check_metric,
        help="Distance or baseline to compute; `patchmmd metrics` lists them.",
    )


def parse_metric_options(items: Iterable[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` strings to a metric's options (:func:`patchmmd.metrics.registry.parse_options`).

    Raises:
        click.BadParameter: what that function refuses, as a usage error of ``--option``.
    """
    from ..metrics.registry import parse_options

    try:
        options = parse_options(items)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--option") from None
    # Image files are read in [0, 1] (8-bit / 255, 16-bit / 65535): another range would give a wrong number
    # (PSNR 48 dB too high with data_range=255), not a check. The options are for tensors in Python.
    for key, default in (("value_range", [0, 1]), ("data_range", 1)):
        if key in options and options[key] != default:
            raise click.BadParameter(
                f"{key}={options[key]!r}: the command line reads image files in [0, 1] (8-bit values / 255, 16-bit "
                f"/ 65535), so their range is always {default!r}; {key} is for tensors of other ranges in Python",
                param_hint="--option")
    return options


def metric_options_option() -> Callable[[F], F]:
    """``--option/-o KEY=VALUE`` (repeatable): keyword options for the metric's factory."""
    return click.option(
        "--option", "-o", "metric_options", multiple=True, metavar="KEY=VALUE",
        help="Option for the metric, repeatable (e.g. -o num_scales=3 -o seed=1).",
    )


def build_metric(name: str, options: dict[str, Any]) -> Callable[..., Any]:
    """The registry's metric ``name`` with ``options``; a bad option becomes a usage error naming it."""
    from ..metrics.registry import get_metric

    try:
        return get_metric(name, **options)
    except (TypeError, ValueError) as e:
        raise click.BadParameter(f"{name}: {e}", param_hint="--option") from None
    except ImportError as e:
        raise click.ClickException(f"metric {name!r} needs an optional dependency: {e}") from None
    except Exception as e:  # any other failure of the metric's factory: one line naming the options
        if debug_enabled():
            raise
        raise click.BadParameter(f"{name}: {one_line_error(e).format_message()}", param_hint="--option") from None


def metric_setup_error(e: MetricSetupError) -> click.ClickException:
    """How a command reports a metric that cannot be built or fails its test pair
    (:func:`patchmmd.scoring.check_metric`): a missing optional dependency (exit status 1), else a usage error
    naming ``--option`` (exit status 2)."""
    if e.missing_dependency:
        return click.ClickException(f"metric {e.metric!r} needs an optional dependency: {e}")
    text = str(e)  # a metric's own message may name it already ("vgg: weights file not found: ...")
    return click.BadParameter(text if text.startswith(f"{e.metric}:") else f"{e.metric}: {text}", param_hint="--option")


def device_option() -> Callable[[F], F]:
    """``--device auto|cpu|cuda|cuda:N|mps`` (default ``auto``: CUDA when available), parsed later by
    :func:`resolve_device_or_fail` (or, for ``score``, by the job runner: both use
    :func:`patchmmd.runtime.resolve_device`)."""
    return click.option(
        "--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]|mps",
        help="Where to compute: auto picks CUDA when available.",
    )


def resolve_device_or_fail(device: str) -> Any:
    """:func:`patchmmd.runtime.resolve_device`, with its error as a usage error on ``--device``."""
    from ..runtime import DeviceError, resolve_device

    try:
        return resolve_device(device)
    except DeviceError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None


def mode_option() -> Callable[[F], F]:
    """``--mode RGB|L|keep``: how image files are read (see :mod:`patchmmd.io`)."""
    return click.option(
        "--mode", type=click.Choice(["RGB", "L", "keep"]), default="RGB", show_default=True,
        help="RGB: grayscale replicated, alpha composited over white; L: luminance; keep: the file's channels.",
    )


def batch_size_option(default: int = 16) -> Callable[[F], F]:
    """``--batch-size N`` (N >= 1)."""
    return click.option(
        "--batch-size", "-b", type=click.IntRange(min=1), default=default, show_default=True,
        help="Pairs of equal size scored together.",
    )


def prepare_output_dir(path: str | os.PathLike[str], *, overwrite: bool, option: str = "--out") -> Path:
    """The output-folder policy of every command that writes a folder: an existing folder that is not empty
    is refused unless ``overwrite`` (``--overwrite``); a file in its place is refused; the folder is created.

    With ``overwrite`` nothing is deleted here: the command's files are replaced as it writes them (and the
    training tasks remove the images of a numbered series beyond their own, left by an earlier, longer run).

    Raises:
        click.UsageError: ``path`` is a file, or a non-empty folder without ``overwrite``; a file is in the way of
            its parents; a name on it is too long for the file system.
        CommandError: the folder cannot be created (permission denied, a read-only file system) or listed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "out"
        >>> prepare_output_dir(d, overwrite=False) == d and d.is_dir()
        True
        >>> (d / "x.txt").write_text("x")
        1
        >>> prepare_output_dir(d, overwrite=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        click.exceptions.UsageError: --out ... already exists and is not empty; pass --overwrite to write into it
    """
    out = Path(path)
    _check_name_length(option, out)
    try:
        is_file = out.exists() and not out.is_dir()
        not_empty = out.is_dir() and any(out.iterdir())
    except OSError as e:  # a name too long for the file system, a folder that cannot be listed
        raise _output_path_error(option, out, e) from None
    if is_file:
        raise click.UsageError(f"{option} {out} is a file; give a folder")
    if not_empty and not overwrite:
        raise click.UsageError(f"{option} {out} already exists and is not empty; pass --overwrite to write into it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # permission denied, a read-only file system: a failure (exit status 1), as in `score`
        from ..io import file_in_the_way

        if e.errno == errno.ENAMETOOLONG:
            raise _output_path_error(option, out, e) from None
        blocker = file_in_the_way(out)
        if blocker is not None:
            raise click.UsageError(f"{option} {out}: {blocker} is a file, not a folder") from None
        raise CommandError(f"{option} {out}: cannot create the folder: {e.strerror or e}") from None
    return out


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    resume: bool | None = None,
    companions: Iterable[str | os.PathLike[str]] = (),
    option: str = "--out",
) -> Path:
    """The output policy: an existing output is refused unless ``--overwrite`` (or ``--resume``).

    ``companions`` are files that belong to the output (e.g. a journal): their presence counts as an
    existing output too. ``resume=None`` means the command has no ``--resume`` option. The output's
    folder is created if missing.

    Raises:
        click.UsageError: the output (or a companion) exists and neither flag allows it; both flags given;
            the output is a folder; a regular file is in the way of its folder; a name on its path is too long
            for the file system.
        CommandError: its folder cannot be created (permission denied, a read-only file system).
    """
    out = Path(path)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other: continue a job, or start it over")
    _check_name_length(option, out)
    try:
        is_dir = out.is_dir()
    except OSError as e:  # e.g. a folder on the path that cannot be searched
        raise _output_path_error(option, out, e) from None
    if is_dir:
        raise click.UsageError(f"{option} {out} is a folder; give a file path")
    # lexists: a symbolic link is an existing output even when it leads nowhere (the write would replace it)
    existing = [p for p in (out, *map(Path, companions)) if os.path.lexists(p)]
    if existing and not overwrite and not resume:
        flags = "--resume to continue the job or --overwrite to start over" if resume is not None else "--overwrite"
        raise click.UsageError(f"{option}: {', '.join(map(str, existing))} already exist(s); pass {flags}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from ..io import file_in_the_way

        if e.errno == errno.ENAMETOOLONG:
            raise _output_path_error(option, out, e) from None
        blocker = file_in_the_way(out)
        if blocker is not None:
            raise click.UsageError(f"{option} {out}: {blocker} is a file, not a folder") from None
        # permission denied, a read-only file system: a failure (exit status 1), as `score` says it
        raise CommandError(f"{option} {out}: cannot create the folder {out.parent}: {e.strerror or e}") from None
    return out


def _check_name_length(option: str, out: Path) -> None:
    """A usage error if ``out``'s name (or a folder's on its path) is too long for the file system: ``Path.exists``
    and ``Path.is_dir`` say False for such a name on recent Pythons, and writing it failed only after the work."""
    try:
        os.lstat(out)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise _output_path_error(option, out, e) from None


def _output_path_error(option: str, out: Path, e: OSError) -> click.ClickException:
    """An output path the checks above cannot even look at: a name too long for the file system is a usage error
    (exit status 2; no run could write it, as ``score`` says it), any other error a failure (exit status 1); both
    name the option, without Python's ``[Errno N]``."""
    if e.errno == errno.ENAMETOOLONG:
        return click.UsageError(f"{option} {out}: the name is too long for the file system; give a shorter name")
    return CommandError(f"{option} {out}: {e.strerror or e}")


def lock_output_folder(out: Path) -> bool:
    """Hold ``OUT.lock`` (:class:`patchmmd.scoring.OutputLock`) until the command ends: one run per output
    folder (``eval``, ``train-ae``, ``train-sr``); whether it is held. A lock that cannot be made (a read-only
    parent folder, a file system without ``flock``, a name too long for ``OUT.lock``) is reported and the command
    goes on without it (``patchmmd score`` goes on only without ``flock``, and refuses the others); what only the
    lock's holder may do (removing a killed run's temporaries) is then not done."""
    from ..scoring import OutputLock, OutputLockedError

    try:
        lock = OutputLock.acquire(out)
    except OutputLockedError as e:
        raise click.ClickException(f"--out: {e}") from None
    except OSError as e:
        click.echo(f"warning: cannot lock {out} ({e.strerror or e}); make sure no other run writes it", err=True)
        return False
    click.get_current_context().call_on_close(lock.release)
    return True
