"""Fresh-eyes audit of the training tasks: runs with different losses are comparable (docs/tasks.md,
"Determinism")."""

from __future__ import annotations

import pytest
import torch

from patchmmd.tasks import make_loss
from patchmmd.tasks.autoencoder import train_autoencoder
from patchmmd.tasks.data import split_photos
from patchmmd.tasks.superres import train_superres


@pytest.mark.parametrize("train", [
    lambda split, loss: train_autoencoder(split, loss, steps=3, width=4, latent=2, seed=7),
    lambda split, loss: train_superres(split, loss, scale=2, steps=3, width=4, blocks=1, seed=7),
], ids=["ae", "sr"])
def test_every_loss_starts_from_the_same_network_and_sees_the_same_batches(train) -> None:
    g = torch.Generator().manual_seed(0)
    split = split_photos([torch.rand(3, 32, 64, generator=g) for _ in range(2)], 16)
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name in ("l2", "l1", "mmdpp"):
        base, calls = make_loss(name), []

        def loss(out: torch.Tensor, target: torch.Tensor, base=base, calls=calls) -> torch.Tensor:
            calls.append((out.detach().clone(), target.clone()))
            return base(out, target)

        train(split, loss)
        seen[name] = calls
    for name in ("l1", "mmdpp"):
        assert len(seen[name]) == len(seen["l2"]) == 3
        assert all(torch.equal(a[1], b[1]) for a, b in zip(seen[name], seen["l2"], strict=True))  # same batches
        assert torch.equal(seen[name][0][0], seen["l2"][0][0])  # same network: the same first outputs
        assert not torch.equal(seen[name][-1][0], seen["l2"][-1][0])  # (and the losses did train differently)
