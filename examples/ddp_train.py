"""Minimal DistributedDataParallel training with MMD++ (``patchmmd.MMDPP``) as the loss.

A small convolutional autoencoder learns to reconstruct synthetic textured images; the reconstruction
loss is MMD++ between output and input. Each process trains on its own share of the data (a
``DistributedSampler``) and DDP averages the gradients, so the parameters stay identical on every rank.
The loss module has no parameters: its random features are drawn from its seed on the CPU and then moved
to the device, so every rank uses the same features (checked at start-up).

    torchrun --nproc_per_node=2 examples/ddp_train.py                       # 2 CPU processes (gloo)
    torchrun --nproc_per_node=4 examples/ddp_train.py --device cuda --steps 200   # 4 GPUs (nccl)
    python examples/ddp_train.py --steps 5                                  # one process, no DDP

On one machine, keep the rendezvous and the collectives on the loopback interface (PyTorch's rendezvous
store listens on all interfaces; these settings make every rank connect over 127.0.0.1, and the collectives
listen on ``lo``; firewall the port on shared machines, see docs/distributed.md)::

    GLOO_SOCKET_IFNAME=lo NCCL_SOCKET_IFNAME=lo torchrun --nproc_per_node=2 \
        --master-addr=127.0.0.1 --master-port=29500 --local-addr=127.0.0.1 examples/ddp_train.py

Ranks started without torchrun need ``WORLD_SIZE``, ``RANK`` and ``MASTER_PORT``; ``MASTER_ADDR`` defaults
to 127.0.0.1 when every rank is on this machine (``patchmmd.scoring.distributed.process_group``).

Options: --steps, --batch-size (per process), --image-size (a multiple of 4: the autoencoder halves it twice),
--images (the synthetic data set, shared out between the processes: each needs at least --batch-size of them),
--lr, --seed, --device auto|cpu|cuda, --checksum-dir DIR (each rank writes rank{r}-init.txt and rank{r}.txt:
hashes of its initial and final parameters).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from patchmmd import MMDPP
from patchmmd.scoring import distributed


class AutoEncoder(nn.Module):
    """Two stride-2 convolutions down, two transposed convolutions up; output in [0, 1] (sigmoid)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synthetic_images(count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` RGB images in [0, 1]: random sums of oriented sinusoids plus a little noise (same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    images = torch.empty(count, 3, size, size)
    for i in range(count):
        img = torch.zeros(3, size, size)
        for _ in range(3):
            angle, freq = torch.rand(2, generator=g) * torch.tensor([math.pi, 12.0])
            phase = torch.rand(3, 1, 1, generator=g) * 2 * math.pi
            wave = torch.cos(2 * math.pi * (freq + 2) * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
            img += wave * torch.rand(3, 1, 1, generator=g)
        img += 0.1 * torch.randn(3, size, size, generator=g)
        images[i] = (img - img.amin()) / (img.amax() - img.amin() + 1e-8)
    return images


def parameter_digest(model: nn.Module) -> str:
    """A hash of every parameter's exact values, in order."""
    parts = "".join(distributed.tensor_digest(p) for p in model.parameters())
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (the docs' commands are checked against it: tests/test_docs_commands.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64, help="size of the synthetic data set")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda:LOCAL_RANK per process)")
    parser.add_argument("--checksum-dir", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch_size, args.images, args.image_size) < 1 or args.steps < 0:
        parser.error("--batch-size, --images and --image-size must be at least 1, --steps at least 0")
    if args.image_size % 4:
        # The autoencoder halves the image twice and doubles it back: any other size comes out a different size.
        parser.error(f"--image-size must be a multiple of 4, got {args.image_size}")

    with distributed.process_group(args.device) as (env, device):
        say = lambda *a: distributed.echo0(*a, env=env)  # noqa: E731
        torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        model = AutoEncoder().to(device)
        train = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        ) if env.is_distributed else model
        loss_fn = MMDPP()  # no parameters; features drawn from seed 0 on the CPU, then moved to `device`

        # The loss is the same function on every rank: same features, same value on the same probe.
        probe = synthetic_images(2, args.image_size, seed=12345).to(device)  # the features training will use
        with torch.no_grad():
            probe_loss = loss_fn(probe, probe.flip(-1))
        if not distributed.same_on_all_ranks(probe_loss):
            print(f"rank {env.rank}: the loss differs between ranks (probe: {probe_loss.item()!r})", file=sys.stderr)
            return 1
        say(f"{env.world_size} process(es) on {device}; loss features identical on every rank")

        data = TensorDataset(synthetic_images(args.images, args.image_size, seed=args.seed + 1))
        sampler = DistributedSampler(data, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=args.seed, drop_last=True)
        loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)
        if len(loader) == 0:  # no batch at all: the loop below would run epochs forever
            say(f"{args.images} images give each of the {env.world_size} process(es) {len(sampler)}, fewer than "
                f"--batch-size {args.batch_size}: pass more --images or a smaller --batch-size")
            return 2
        opt = torch.optim.Adam(train.parameters(), lr=args.lr)
        if args.checksum_dir is not None:
            args.checksum_dir.mkdir(parents=True, exist_ok=True)
            (args.checksum_dir / f"rank{env.rank}-init.txt").write_text(parameter_digest(model) + "\n")
        step, epoch = 0, 0
        while step < args.steps:
            sampler.set_epoch(epoch)
            for (x,) in loader:
                x = x.to(device)
                loss = loss_fn(train(x), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # DDP all-reduces (averages) the gradients here
                opt.step()
                step += 1
                losses = distributed.all_gather_object(loss.item())
                say(f"step {step:4d}  MMD++ loss {sum(losses) / len(losses):.5f}")
                if step >= args.steps:
                    break
            epoch += 1

        digest = parameter_digest(model)
        if args.checksum_dir is not None:
            (args.checksum_dir / f"rank{env.rank}.txt").write_text(digest + "\n")
        if not distributed.same_on_all_ranks(*model.parameters()):
            print(f"rank {env.rank}: parameters differ between ranks", file=sys.stderr)
            return 1
        say(f"done: {step} steps; parameters identical on all {env.world_size} rank(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
