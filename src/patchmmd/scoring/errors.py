"""The errors of a scoring job: each says what is wrong, in the library's words (no command-line flags).

Every error a job can meet on bad input or a bad state of its output is a :class:`ScoringError` (a
``ValueError``); a front end (``patchmmd score``) maps each class to its own message and exit status. The
errors pickle with their attributes, so that a rank of a launch can send its error to the others.

Example:
    >>> import pickle
    >>> e = pickle.loads(pickle.dumps(FolderError("folder not found: x", role="ref")))
    >>> type(e).__name__, e.role, str(e)
    ('FolderError', 'ref', 'folder not found: x')
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def readable_text(text: str) -> str:
    """A file name (or any text) as valid Unicode: names that are not valid UTF-8 (lone surrogates from
    :func:`os.fsdecode`) show their undecodable bytes as ``\\xNN``.

    Example:
        >>> readable_text("bad\\udcff.png"), readable_text("é.png")
        ('bad\\\\xff.png', 'é.png')
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to (a hand-edited journal)
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def printable_text(text: str) -> str:
    """A file name (or any text) as a message shows it, on one plain line: :func:`readable_text`, then each
    character that is not printable (a line break, a tab, a terminal's escape character) escaped as Python writes
    it in a string (``\\n``, ``\\t``, ``\\x1b``).

    Example:
        >>> printable_text("a\\nb\\x1b[2J.png"), printable_text("bad\\udcff é.png")
        ('a\\\\nb\\\\x1b[2J.png', 'bad\\\\xff é.png')
    """
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in readable_text(text))


def printable_paths(text: str, paths: Iterable[str | os.PathLike[str]]) -> str:
    r"""``text`` (a message that holds file names as they are) with each of ``paths`` as :func:`printable_text`
    writes it; the rest of ``text`` is left as it is.

    Example:
        >>> printable_paths("cannot read d/a\nb.png", ["d/a\nb.png"])
        'cannot read d/a\\nb.png'
    """
    for path in paths:
        name = os.fspath(path)
        if name:
            text = text.replace(name, printable_text(name))
    return text


def error_text(e: BaseException, paths: Iterable[str | os.PathLike[str]] = ()) -> str:
    r"""An error as one line of an error row: ``"ErrorType: message"`` (``"ErrorType"`` for an error without a
    message, such as a bare ``MemoryError``).

    The ``paths`` (the files the error is about) are shown as :func:`printable_text` writes them wherever the
    message holds them, so that a line break or a control character in a file name reads as ``\n`` or ``\x1b``;
    the message's own line breaks become spaces and any other character that is not printable is escaped.

    Example:
        >>> error_text(ValueError("bad\nimage"))
        'ValueError: bad image'
        >>> error_text(ValueError("cannot read d/a\nb.png"), paths=["d/a\nb.png"])
        'ValueError: cannot read d/a\\nb.png'
    """
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__  # e.g. a bare MemoryError
    return printable_text(" ".join(printable_paths(text, paths).splitlines()))


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """Unpickle an error without calling its ``__init__`` (whose signature may differ from ``args``)."""
    e = cls.__new__(cls)
    e.args = args
    e.__dict__.update(state)
    return e


class ScoringError(ValueError):
    """A scoring job cannot go on: bad input, or an output in a state the job's rules refuse."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, self.__dict__)


class JobMismatchError(ScoringError):
    """An existing journal belongs to a different job (other folders, metric, options or file list)."""


class JournalError(ScoringError):
    """A journal line that is not a row this engine writes (wrong shape or values), or a line before the last
    that is not JSON at all (only the last line can be torn by a crash).

    The message names the journal and the line number (1 = the header).
    """


class UntrustedJournalError(ScoringError):
    """A journal someone other than the user (or root) could have written (see :mod:`patchmmd._trust`): its rows
    would be kept as scores, so it is not read."""


class FolderError(ScoringError):
    """An input folder is missing, not a folder, or holds too few images.

    :attr:`role` is ``"folder"`` (an all-pairs job), ``"ref"`` or ``"dist"`` (a paired job).
    """

    def __init__(self, message: str, *, role: str) -> None:
        super().__init__(message)
        self.role = role


class NoPairsError(ScoringError):
    """A paired job whose folders share no relative path; :attr:`only_ref` / :attr:`only_dist` list the files."""

    def __init__(self, message: str, *, only_ref: Sequence[str] = (), only_dist: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.only_ref = list(only_ref)
        self.only_dist = list(only_dist)


class MetricSetupError(ScoringError):
    """The metric cannot be built with its options, or fails on a tiny test pair.

    :attr:`missing_dependency` is true when an optional package is missing (not a fault of the options).
    """

    def __init__(self, message: str, *, metric: str, missing_dependency: bool = False) -> None:
        super().__init__(message)
        self.metric = metric
        self.missing_dependency = missing_dependency


class OutputPathError(ScoringError):
    """The output path cannot hold a file: :attr:`reason` is ``"is_folder"``, ``"parent_is_file"``,
    ``"name_too_long"`` (the file system refuses the names of the files kept next to it, its lock file and
    journal), ``"is_input"`` (it, or its journal or lock file, is one of the job's images: the same file, by name or
    through a link, which the job would replace) or ``"cannot_create"`` (its folder cannot be created: an
    operating-system error, not a usage error)."""

    def __init__(self, message: str, *, output: Path, reason: str) -> None:
        super().__init__(message)
        self.output = output
        self.reason = reason


class OutputExistsError(ScoringError):
    """The output or one of its journals exists, and the job neither resumes nor overwrites."""

    def __init__(self, message: str, *, existing: Sequence[Path]) -> None:
        super().__init__(message)
        self.existing = list(existing)


class NothingToResumeError(ScoringError):
    """Resuming a job whose output exists without a journal: that job has finished."""

    def __init__(self, message: str, *, output: Path) -> None:
        super().__init__(message)
        self.output = output


class JournalOpenError(ScoringError):
    """A rank's journal cannot be created or opened (an operating-system error)."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class JournalWriteError(ScoringError):
    """A journal could not be written while scoring (an operating-system error: a full disk, a lost mount, ...).

    The rows appended before are on disk (a torn last line is dropped on resuming), so the job can be resumed once
    the cause is fixed: :attr:`saved` of :attr:`total` pairs are saved (in a launch of several ranks: of this
    rank's share); :attr:`path` is the journal.
    """

    def __init__(self, message: str, *, path: Path, saved: int = 0, total: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.saved = saved
        self.total = total


class InconsistentJournalsError(ScoringError):
    """The ranks of a launch do not see the same journals (the output is not on a shared file system), or did not
    build the same job (other arguments, or input folders whose files differ between the ranks)."""


class FinalizeError(ScoringError):
    """The final CSV could not be written; the journals are kept, so the job can be resumed."""


class RankFailedError(ScoringError):
    """Another rank of the launch failed a step; :attr:`cause` is its error, :attr:`rank` its rank.

    Every rank stops: the failing one with its own error, the others with this one.
    """

    def __init__(self, rank: int, cause: BaseException) -> None:
        super().__init__(f"rank {rank}: {cause}")
        self.rank = rank
        self.cause = cause


class JobInterrupted(KeyboardInterrupt):
    """The job was stopped by Ctrl-C or SIGTERM; the finished rows are kept in the journal(s).

    :attr:`signal` is ``"SIGINT"`` or ``"SIGTERM"``; :attr:`saved` of :attr:`total` pairs are in
    :attr:`journal` (in a launch of several ranks: this rank's share, :attr:`distributed` true).
    """

    def __init__(self, *, signal: str, saved: int, total: int, journal: Path, rank: int, distributed: bool) -> None:
        super().__init__(f"{signal}: {saved} of {total} pairs are saved in {journal}")
        self.signal = signal
        self.saved = saved
        self.total = total
        self.journal = journal
        self.rank = rank
        self.distributed = distributed
