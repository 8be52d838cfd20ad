"""Running on several processes or GPUs with ``torch.distributed`` (``torchrun``, SLURM, Kubernetes).

patchmmd has no scheduler of its own: a launcher (``torchrun``, ``srun`` + ``torchrun``, a Kubernetes
PyTorchJob...) starts one process per GPU (or per CPU share) and sets the usual environment variables
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT`` for the rendezvous). This
module reads them and wraps the few pieces of ``torch.distributed`` that ``patchmmd score`` and a training
script need:

* :func:`detect` reads the environment into a :class:`DistEnv` (a single process when ``WORLD_SIZE`` is
  unset or 1);
* :func:`device_for` picks each rank's device (``cuda:LOCAL_RANK`` on GPUs) and :func:`choose_backend` the
  backend (``nccl`` for CUDA devices, ``gloo`` otherwise);
* :func:`process_group` (a context manager) / :func:`init` and :func:`destroy` set up and tear down the
  default process group;
* :func:`barrier`, :func:`all_gather_object` and :func:`same_on_all_ranks` are collectives that are no-ops
  (or trivial) in a single process, so the same code runs with and without a launcher;
* :func:`echo0` prints from rank 0 only.

Errors of a collective caused by a lost peer (a rank killed or crashed) are raised as :class:`PeerLostError`
with a message that says so; ranks that do not all meet to set up the group, as :class:`RendezvousError` (one of
them). A missing or malformed launch variable is a :class:`LaunchEnvironmentError` (a ``ValueError``).

Example (a single process: nothing is initialised, collectives are trivial):
    >>> env = detect({})
    >>> env.world_size, env.rank, env.is_distributed
    (1, 0, False)
    >>> with process_group("cpu", env=env) as (env, device):
    ...     barrier()
    ...     all_gather_object({"rank": env.rank}), str(device)
    ([{'rank': 0}], 'cpu')
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: Environment variable: the timeout of collectives in seconds (default :data:`DEFAULT_TIMEOUT_S`).
TIMEOUT_ENV = "PATCHMMD_DIST_TIMEOUT"
#: One hour: how long a rank waits for the others at a barrier (e.g. at the end of a scoring job).
DEFAULT_TIMEOUT_S = 3600.0
#: The rendezvous address :func:`init` uses on one machine when ``MASTER_ADDR`` is unset: the loopback
#: interface, so that ranks started by hand on one machine connect over 127.0.0.1 only.
LOOPBACK_ADDR = "127.0.0.1"


class LaunchEnvironmentError(ValueError):
    """The launch's environment variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``, ``PATCHMMD_DIST_TIMEOUT``) are missing, malformed or inconsistent."""


class PeerLostError(RuntimeError):
    """A collective failed: another rank is gone (killed, crashed) or did not answer within the timeout."""


class RendezvousError(PeerLostError):
    """The process group could not be set up (:func:`init`): not every rank joined within the timeout (one that
    never started, or was started with another ``MASTER_ADDR`` or ``MASTER_PORT``), or the backend could not
    connect the ranks. Raised before any collective, so nothing was shared out or scored."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a launch: its global rank, the world size and its rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process (a process group is needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes outputs and prints summaries."""
        return self.rank == 0


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise LaunchEnvironmentError(f"environment variable {name}={text!r} is not an integer") from None


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The launch this process belongs to, from ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``.

    Unset variables mean a single process (world size 1, rank 0). ``LOCAL_RANK`` defaults to ``RANK`` and
    ``LOCAL_WORLD_SIZE`` to ``WORLD_SIZE`` (one node). With ``WORLD_SIZE`` above 1, ``RANK`` must be set: every
    process would otherwise take itself for rank 0 (and wait for the others until the timeout). A ``RANK`` or
    ``LOCAL_RANK`` other than 0 without ``WORLD_SIZE`` is refused too (a launch's rank that lacks its size).

    Raises:
        LaunchEnvironmentError: (a ``ValueError``) a variable is not an integer, the ranks or
            ``LOCAL_WORLD_SIZE`` are out of range, ``RANK`` is unset while ``WORLD_SIZE`` is above 1, or ``RANK`` /
            ``LOCAL_RANK`` is not 0 while ``WORLD_SIZE`` is unset.

    Example:
        >>> detect({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
        DistEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)
    """
    environ = os.environ if environ is None else environ
    world_size = _env_int(environ, "WORLD_SIZE", 1)
    rank = _env_int(environ, "RANK", 0)
    local_rank = _env_int(environ, "LOCAL_RANK", rank)
    local_world_size = _env_int(environ, "LOCAL_WORLD_SIZE", world_size)
    if world_size < 1:
        raise LaunchEnvironmentError(f"WORLD_SIZE must be at least 1, got {world_size}")
    if (environ.get("WORLD_SIZE") or "").strip() == "":  # a rank of a launch that lacks the launch's size
        for name, value in (("RANK", rank), ("LOCAL_RANK", local_rank)):
            if value != 0:
                raise LaunchEnvironmentError(f"{name}={value} is set but WORLD_SIZE is not: set WORLD_SIZE to the "
                                             f"number of processes, or unset {name} to run a single process")
    if world_size > 1:  # a launch: every process needs its rank, and the ranks of one node are some of them
        if (environ.get("RANK") or "").strip() == "":
            raise LaunchEnvironmentError(f"WORLD_SIZE={world_size} but RANK is not set: give each process its "
                                         f"rank (0 to {world_size - 1}), or unset WORLD_SIZE to run a single process")
        if not 1 <= local_world_size <= world_size:
            raise LaunchEnvironmentError(f"LOCAL_WORLD_SIZE must be in [1, WORLD_SIZE={world_size}], "
                                         f"got {local_world_size}")
    if not 0 <= rank < world_size:
        raise LaunchEnvironmentError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
    if not 0 <= local_rank < max(local_world_size, 1):
        raise LaunchEnvironmentError(f"LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE={local_world_size}), "
                                     f"got {local_rank}")
    return DistEnv(rank, world_size, local_rank, local_world_size)


def device_for(device: str | torch.device, env: DistEnv | None = None) -> torch.device:
    """This rank's device for a device string: ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK``.

    :func:`patchmmd.runtime.resolve_device` with the rank's ``LOCAL_RANK`` when there are several processes.
    ``auto`` is CUDA when available, else the CPU; ``cpu`` and an explicit ``cuda:N`` are kept as given.
    In a single process ``auto`` / ``cuda`` mean the current CUDA device, as usual.

    Raises:
        patchmmd.runtime.DeviceError: (a ``ValueError``) CUDA asked for but not available, ``LOCAL_RANK``
            has no GPU, or an unknown device.

    Example:
        >>> device_for("cpu", DistEnv(rank=1, world_size=2, local_rank=1))
        device(type='cpu')
    """
    from ..runtime import resolve_device

    env = detect() if env is None else env
    return resolve_device(device, local_rank=env.local_rank if env.is_distributed else None)


def choose_backend(device: str | torch.device) -> str:
    """``"nccl"`` for a CUDA device when NCCL is available, else ``"gloo"`` (CPU, or no NCCL).

    Example:
        >>> choose_backend("cpu")
        'gloo'
    """
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        import torch.distributed as dist

        if dist.is_nccl_available():
            return "nccl"
    return "gloo"


def default_timeout() -> timedelta:
    """The timeout of collectives: ``$PATCHMMD_DIST_TIMEOUT`` seconds, default one hour.

    Raises:
        LaunchEnvironmentError: (a ``ValueError``) the variable is not a positive, finite number of seconds (at
            most :attr:`timedelta.max`).
    """
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
        timeout = timedelta(seconds=seconds)
    except (ValueError, OverflowError):  # not a number; inf, or beyond what a timedelta holds
        timeout = timedelta(0)
    if not timeout > timedelta(0):
        raise LaunchEnvironmentError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds, finite "
                                     f"(e.g. {int(DEFAULT_TIMEOUT_S)})")
    return timeout


def rendezvous_port(environ: Mapping[str, str] | None = None) -> int:
    """The rendezvous port, ``$MASTER_PORT``: a launcher (``torchrun``) sets it; ranks started by hand must.

    Raises:
        LaunchEnvironmentError: (a ``ValueError``) ``MASTER_PORT`` is unset or not a port number (1-65535).

    Example:
        >>> rendezvous_port({"MASTER_PORT": "29500"})
        29500
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("MASTER_PORT", "").strip()
    if not raw:
        raise LaunchEnvironmentError("MASTER_PORT is not set: give every rank the same free port for the "
                                     "rendezvous (e.g. MASTER_PORT=29500; torchrun sets it)")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise LaunchEnvironmentError(f"MASTER_PORT must be a port number (1-65535) for the rendezvous, "
                                     f"got {raw!r}")
    return int(raw)


def rendezvous_address(env: DistEnv, environ: Mapping[str, str] | None = None) -> str:
    """The rendezvous host for ``env``: ``$MASTER_ADDR`` if set, else :data:`LOOPBACK_ADDR` on one machine.

    One machine means ``LOCAL_WORLD_SIZE == WORLD_SIZE`` (every rank on this node). Launchers (``torchrun``,
    SLURM scripts, Kubernetes operators) set ``MASTER_ADDR`` themselves; this default only serves ranks
    started by hand, and keeps them on the loopback interface instead of the host's public name.

    Raises:
        LaunchEnvironmentError: (a ``ValueError``) ``MASTER_ADDR`` is unset and the ranks span several machines.

    Example:
        >>> rendezvous_address(DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2), {})
        '127.0.0.1'
        >>> rendezvous_address(DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2), {"MASTER_ADDR": "n1"})
        'n1'
    """
    environ = os.environ if environ is None else environ
    addr = environ.get("MASTER_ADDR", "").strip()
    if addr:
        return addr
    if env.local_world_size != env.world_size:
        raise LaunchEnvironmentError(
            f"MASTER_ADDR is not set and the {env.world_size} ranks span several machines "
            f"(LOCAL_WORLD_SIZE={env.local_world_size}); set MASTER_ADDR to the host of rank 0"
        )
    return LOOPBACK_ADDR


# The device whose tensors the default group's backend can reduce (CUDA for nccl, else CPU).
_collective_device: torch.device | None = None


def is_initialized() -> bool:
    """Whether a default process group is set up (in this process)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init(device: str | torch.device, env: DistEnv | None = None, *, timeout: timedelta | None = None) -> str:
    """Set up the default process group for ``env`` (rendezvous from ``MASTER_ADDR`` / ``MASTER_PORT``).

    ``MASTER_ADDR`` defaults to 127.0.0.1 on one machine (:func:`rendezvous_address`); ``MASTER_PORT``
    must be set (``torchrun`` sets both). Every rank waits up to ``timeout`` (default :func:`default_timeout`)
    for the others to join.

    The backend follows ``device`` (:func:`choose_backend`); a CUDA device becomes the current device.
    Does nothing for a single process or when a group is already initialised. Returns the backend
    (``""`` when nothing was initialised).

    Raises:
        LaunchEnvironmentError: ``MASTER_ADDR`` / ``MASTER_PORT`` missing or malformed (:func:`rendezvous_address`,
            :func:`rendezvous_port`). ValueError: rank 0 cannot listen on ``MASTER_PORT`` (:func:`loopback_store`).
        RendezvousError: the ranks did not all join within the timeout (one message naming the address,
            the world size and the timeout), or the backend could not connect them.
    """
    import torch.distributed as dist

    global _collective_device
    env = detect() if env is None else env
    if not env.is_distributed or is_initialized():
        return ""
    if not dist.is_available():
        raise RuntimeError("this build of PyTorch has no torch.distributed; run a single process")
    addr, port = rendezvous_address(env), rendezvous_port()
    os.environ["MASTER_ADDR"] = addr
    dev = torch.device(device)
    backend = choose_backend(dev)
    if backend == "nccl":
        torch.cuda.set_device(dev)
        _collective_device = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    else:
        _collective_device = torch.device("cpu")
    timeout = timeout or default_timeout()
    try:
        store = loopback_store(env, timeout)
        if store is None:
            dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                                    world_size=env.world_size, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=store, rank=env.rank, world_size=env.world_size,
                                    timeout=timeout)
    except RuntimeError as e:  # e.g. torch's DistStoreError / DistNetworkError: a rank that never came
        _collective_device = None
        text = str(e).splitlines()[0] if str(e) else ""
        detail, where = f"{type(e).__name__}: {text}", f"the rendezvous at {addr}:{port} (MASTER_ADDR:MASTER_PORT)"
        timed_out = "timed out" in text.lower() or "timeout" in text.lower()
        if isinstance(e, (dist.DistStoreError, dist.DistNetworkError)) and timed_out:
            raise RendezvousError(
                f"rank {env.rank}: not all {env.world_size} ranks (WORLD_SIZE) joined {where} within "
                f"{timeout.total_seconds():g} s ({TIMEOUT_ENV}); start every rank, 0 to {env.world_size - 1} "
                f"(RANK), with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT [{detail}]"
            ) from e
        raise RendezvousError(f"rank {env.rank}: could not set up the {backend} process group through {where}: "
                              f"{detail}") from e
    except BaseException:
        _collective_device = None
        raise
    return backend


#: Host names that mean this machine only.
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def loopback_store(env: DistEnv, timeout: timedelta, environ: Mapping[str, str] | None = None) -> Any:
    """The rendezvous store for ranks started by hand on one machine, listening on the loopback interface only;
    ``None`` where :func:`init` should use ``init_method="env://"`` as it is.

    ``env://`` makes rank 0 run PyTorch's ``TCPStore`` server, which listens on every interface of the machine
    whatever ``MASTER_ADDR`` says, and which has no authentication: during the run anyone who can reach the
    port could read or write the rendezvous. When ``MASTER_ADDR`` is a loopback address (127.0.0.1, ``::1``,
    ``localhost``; :func:`rendezvous_address` chooses 127.0.0.1 on one machine), rank 0 binds the listening
    socket itself to that address and hands it to the ``TCPStore`` (its ``master_listen_fd``), and the other
    ranks connect to it. Returns ``None`` under ``torchrun`` (its agent runs the store; ``--master_addr`` and
    ``--local_addr`` are its own to set) and for any other address (several machines: the store must be
    reachable from them).

    Raises:
        ValueError: ``MASTER_PORT`` is unset, not a port number (:class:`LaunchEnvironmentError`), or (rank 0)
            cannot be listened on (in use).
    """
    import socket

    import torch.distributed as dist

    environ = os.environ if environ is None else environ
    host = environ.get("MASTER_ADDR", "").strip()
    if host not in _LOOPBACK_HOSTS or environ.get("TORCHELASTIC_USE_AGENT_STORE", "").strip().lower() == "true":
        return None
    port = rendezvous_port(environ)
    ip, family = ("::1", socket.AF_INET6) if host == "::1" else ("127.0.0.1", socket.AF_INET)
    if env.rank != 0:
        return dist.TCPStore(ip, port, env.world_size, False, timeout)
    try:
        listener = socket.create_server((ip, port), family=family, backlog=max(128, env.world_size))
    except OSError as e:
        raise ValueError(f"cannot listen for the rendezvous on {ip} port {port} (MASTER_PORT): {e.strerror or e} "
                         "(another launch, or a second rank 0, may be using it: give this launch's ranks another "
                         "MASTER_PORT)") from None
    ident = os.fstat(listener.fileno())
    fd = listener.detach()  # the store owns the descriptor from here on
    try:
        return dist.TCPStore(ip, port, env.world_size, True, timeout, master_listen_fd=fd)
    except Exception:
        # A store that fails (e.g. no other rank came within the timeout) has closed the descriptor itself:
        # close it only if it still is the listening socket, never a number reused since, and keep the error.
        try:
            ours = os.path.samestat(os.fstat(fd), ident)
        except OSError:
            ours = False
        if ours:
            os.close(fd)
        raise


def destroy(*, settle: bool = False) -> None:
    """Tear down the default process group, if any.

    ``settle`` (a normal exit, all ranks alive): first a barrier, then a short pause without the GIL. Gloo's
    worker threads release finished work items on their own, and releasing one that holds tensors seen by
    Python needs the GIL; a group destroyed while one is pending (its destructor joins those threads with
    the GIL held) deadlocks. The pause lets them finish first.
    """
    import torch.distributed as dist

    global _collective_device
    if is_initialized():
        if settle and dist.get_world_size() > 1:
            try:
                dist.barrier()
            except Exception:  # a peer is gone: nothing to wait for
                pass
            time.sleep(0.05)
        dist.destroy_process_group()
    _collective_device = None


@contextmanager
def process_group(
    device: str | torch.device = "auto", *, env: DistEnv | None = None, timeout: timedelta | None = None
) -> Iterator[tuple[DistEnv, torch.device]]:
    """``with process_group("auto") as (env, device):`` — the launch, this rank's device, a live group.

    The group is destroyed on exit (also on an error). In a single process nothing is initialised.
    """
    env = detect() if env is None else env
    dev = device_for(device, env)
    started = bool(init(dev, env, timeout=timeout))
    try:
        yield env, dev
    except BaseException:
        if started:
            destroy()
        raise
    if started:
        destroy(settle=True)


def _lost(e: BaseException) -> PeerLostError:
    rank = os.environ.get("RANK", "?")
    return PeerLostError(
        f"rank {rank}: lost contact with the other ranks (one was killed, crashed or timed out): "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    )


def barrier() -> None:
    """Wait for every rank (a no-op in a single process).

    Raises:
        PeerLostError: a rank is gone.
    """
    if not is_initialized():
        return
    import torch.distributed as dist

    try:
        if _collective_device is not None and _collective_device.type == "cuda":
            dist.barrier(device_ids=[_collective_device.index])
        else:
            dist.barrier()
    except RuntimeError as e:
        raise _lost(e) from e


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process.

    Raises:
        PeerLostError: a rank is gone.
    """
    if not is_initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as e:
        raise _lost(e) from e
    return out


def tensor_digest(tensor: torch.Tensor) -> str:
    """A hash of a tensor's dtype, shape and exact values (on any device).

    Example:
        >>> tensor_digest(torch.zeros(3)) == tensor_digest(torch.zeros(3)) != tensor_digest(torch.ones(3))
        True
    """
    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}{tuple(tensor.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def same_on_all_ranks(*tensors: torch.Tensor) -> bool:
    """Whether the tensors are bit-identical on every rank (e.g. random features, model parameters).

    Example:
        >>> same_on_all_ranks(torch.arange(4.0))
        True
    """
    digest = hashlib.sha256("".join(tensor_digest(t) for t in tensors).encode()).hexdigest()
    return len(set(all_gather_object(digest))) == 1


def echo0(*args: object, err: bool = True, env: DistEnv | None = None) -> None:
    """``print`` from rank 0 only (to stderr unless ``err=False``)."""
    env = detect() if env is None else env
    if env.is_main:
        print(*args, file=sys.stderr if err else sys.stdout, flush=True)
