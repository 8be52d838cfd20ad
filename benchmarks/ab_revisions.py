"""Time one distance in two versions of the code, or with two sets of options, side by side.

The before/after figures of docs/performance.md ("a side check") compare a change of the code with the code
before it. This script reruns such a comparison: each arm is ``REV@CANDIDATE``, a git revision of this repo
and a registry metric with its options in the suite's ``NAME[:KEY=VALUE,...]`` grammar. Each revision's
``src`` is exported once (``git archive``) to a temporary folder, and the arms are timed in fresh subprocesses
that alternate round by round (A, B, B, A, A, B, ...), so that a change of the machine's load hits both alike;
each subprocess runs one configuration, with its own warm-up, and reports the median of ``--calls`` calls.
Before any timing, each arm's metric is built once in a subprocess of its revision: a name or an option that
revision does not know stops the run there, not after the other arm's first timings.
The compiled CPU kernels build once per revision into the usual cache (keyed by their source).

    python benchmarks/ab_revisions.py 'HEAD~1@mmdpp' 'HEAD@mmdpp' --configs 1024x1,2048x1 --threads 1
    python benchmarks/ab_revisions.py 'HEAD@mmdpp:preset=loss' 'HEAD@mmdpp:preset=loss,patch_size=5' \\
        --configs 256x4 --threads 2 --rounds 3

Only committed code is timed (the working tree is never read or changed): an arm at ``HEAD`` while ``src``
has uncommitted changes is refused, since it would not time them.

Printed per configuration: each round's median for A and B (ms), the ratio B / A of the medians over the
rounds, and the lowest and highest ratio of one round's pair. Inputs are a seeded image and a noisy copy of it,
in [0, 1], float32 on the CPU; the mode is the distance forward (``forward``) or forward and backward through
``x`` (``forward+backward``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from patchmmd.evaluation.suite import parse_candidate

REPO = Path(__file__).resolve().parents[1]

#: Runs in the subprocess, with the revision's ``src`` first on ``sys.path``: builds the metric from the
#: registry (whose module moved once; both places are tried) and prints one JSON line of times in seconds.
WORKER = r"""
import json, sys, time
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
try:
    from patchmmd.metrics.registry import get_metric
except ImportError:
    from patchmmd.registry import get_metric
metric = get_metric(spec["name"], **spec["options"])
if spec["build_only"]:  # the arm's check before any timing: the metric and its options exist at this revision
    print(json.dumps({"times": [], "file": __import__("patchmmd").__file__}))
    raise SystemExit(0)
size, batch = spec["size"], spec["batch"]
g = torch.Generator().manual_seed(0)
y = torch.rand(batch, 3, size, size, generator=g)
x0 = (y + 0.05 * torch.randn(y.shape, generator=g)).clamp(0, 1)
backward = spec["mode"] == "forward+backward"
def call():
    x = x0.clone().requires_grad_(backward)
    d = metric(x, y).sum()
    if backward:
        d.backward()
for _ in range(spec["warmup"]):
    call()
times = []
for _ in range(spec["calls"]):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "file": __import__("patchmmd").__file__}))
"""


def parse_arm(text: str) -> tuple[str, str, dict[str, object]]:
    """``REV@NAME[:KEY=VALUE,...]`` into the revision, the metric name and its options."""
    rev, sep, candidate = text.partition("@")
    if not sep or not rev or not candidate:
        raise SystemExit(f"an arm is REV@METRIC[:KEY=VALUE,...], got {text!r}")
    try:
        name, options = parse_candidate(candidate)
    except ValueError as e:
        raise SystemExit(f"arm {text!r}: {e}") from None
    return rev, name, options


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``SIZExBATCH,...`` (``256x4,1024x1``) into (size, batch) pairs; a clear exit for a bad item."""
    configs = []
    for item in text.split(","):
        try:
            size, batch = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            size = batch = 0
        if size < 1 or batch < 1:
            raise SystemExit(f"--configs: {item!r} is not SIZExBATCH (two positive integers, e.g. 256x4)")
        configs.append((size, batch))
    return configs


def _git(*args: str) -> str:
    """``git -C REPO ARGS`` and its output; a failure exits with git's own message."""
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {out.stderr.strip() or f'exit status {out.returncode}'}")
    return out.stdout.strip()


def resolve(rev: str) -> str:
    """The commit ``rev`` names, or a clear exit if it names none in this repository."""
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"revision {rev!r} is not a commit of {REPO}")
    return out.stdout.strip()


def check_not_dirty(revs: list[str]) -> None:
    """Refuse an arm that resolves to ``HEAD`` while ``src`` has uncommitted changes: ``git archive`` exports
    the committed code, so that arm would silently not time the working tree's change."""
    head = _git("rev-parse", "HEAD")
    at_head = list(dict.fromkeys(rev for rev in revs if resolve(rev) == head))
    if at_head and _git("status", "--porcelain", "--", "src"):
        raise SystemExit(f"src/ has uncommitted changes, and {' and '.join(map(repr, at_head))} resolves to HEAD: "
                         "this script times committed code only (git archive), not the working tree; commit the "
                         "change first")


def export(rev: str, into: Path) -> Path:
    """The revision's ``src`` folder, exported with ``git archive`` under ``into`` (one folder per commit)."""
    commit = resolve(rev)
    dest = into / commit
    if not dest.exists():
        archive = into / f"{commit}.tar"
        with open(archive, "wb") as f:
            subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], check=True, stdout=f)
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
        archive.unlink()
    return dest / "src"


def run_arm(src: Path, name: str, options: dict[str, object], size: int, batch: int, args: argparse.Namespace,
            build_only: bool = False) -> float:
    """The median time of ``args.calls`` calls of the metric at ``src`` in a fresh subprocess; with ``build_only``
    the subprocess only builds the metric (a bad name or option exits here, before any arm is timed) and 0 is
    returned."""
    spec = {"name": name, "options": options, "size": size, "batch": batch, "mode": args.mode,
            "threads": args.threads, "calls": args.calls, "warmup": args.warmup, "build_only": build_only}
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        why = "\n".join(proc.stderr.strip().splitlines()[-8:]) or f"exit status {proc.returncode}"
        raise SystemExit(f"{name} {options} at {size}x{size} x{batch} failed in the subprocess ({src}):\n{why}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(result["file"]).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"the subprocess imported {result['file']}, not the exported {src}")
    return statistics.median(result["times"]) if not build_only else 0.0


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the docs' commands are checked against it: tests/test_docs_commands.py)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="REV@METRIC[:KEY=VALUE,...], the baseline")
    ap.add_argument("b", help="REV@METRIC[:KEY=VALUE,...], compared with A")
    ap.add_argument("--configs", default="256x4", help="SIZExBATCH,... (square images)")
    ap.add_argument("--mode", choices=("forward", "forward+backward"), default="forward+backward")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="subprocesses per arm and configuration")
    ap.add_argument("--calls", type=int, default=7, help="timed calls per subprocess (their median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if min(args.rounds, args.calls) < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--rounds, --calls and --threads must be at least 1, --warmup at least 0")
    arms = [parse_arm(args.a), parse_arm(args.b)]
    configs = parse_configs(args.configs)
    check_not_dirty([rev for rev, _, _ in arms])
    with tempfile.TemporaryDirectory(prefix="patchmmd-ab-") as tmp:
        srcs = [export(rev, Path(tmp)) for rev, _, _ in arms]
        for src, (_, name, options) in zip(srcs, arms, strict=True):  # both arms build before either is timed
            run_arm(src, name, options, *configs[0], args, build_only=True)
        print(f"A = {args.a}\nB = {args.b}\n{args.mode}, {args.threads} thread(s), {args.rounds} rounds, "
              f"median of {args.calls} calls each (ms)")
        for size, batch in configs:
            times: list[list[float]] = [[], []]
            for r in range(args.rounds):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for i in order:
                    _, name, options = arms[i]
                    times[i].append(run_arm(srcs[i], name, options, size, batch, args))
            a, b = (" / ".join(f"{t * 1e3:.1f}" for t in ts) for ts in times)
            ratio = statistics.median(times[1]) / statistics.median(times[0])
            rounds = [tb / ta for ta, tb in zip(times[0], times[1], strict=True)]  # each round's pair
            print(f"{size}x{size} x{batch}: A {a} | B {b} | B/A {ratio:.3f} (rounds {min(rounds):.3f}-"
                  f"{max(rounds):.3f})", flush=True)


if __name__ == "__main__":
    main()
