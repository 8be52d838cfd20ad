"""The training functions leave every global random stream alone, a GPU's too: they seed the CPU generator
inside ``torch.random.fork_rng(devices=[])``, which restores the CPU's stream only, so seeding the GPUs there
(as ``torch.manual_seed`` does) reset a caller's CUDA stream on a machine with a GPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from patchmmd.tasks import make_loss
from patchmmd.tasks.autoencoder import train_autoencoder
from patchmmd.tasks.data import split_photos
from patchmmd.tasks.superres import train_superres


@pytest.mark.parametrize("train", ["sr", "ae"])
def test_training_seeds_no_gpu_generator(train: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded: list[Any] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    g = torch.Generator().manual_seed(0)
    split = split_photos([torch.rand(3, 32, 64, generator=g), torch.rand(3, 32, 64, generator=g)], 16)
    loss = make_loss("l1")
    torch.manual_seed(5)  # the caller's own seeding, which does reach the GPUs
    seeded.clear()
    if train == "sr":
        result = train_superres(split, loss, scale=2, steps=2, batch=2, width=4, blocks=1, seed=3)
    else:
        result = train_autoencoder(split, loss, steps=2, batch=2, width=4, latent=2, seed=3)
    assert seeded == [], "training seeded the GPUs' generators, which fork_rng(devices=[]) does not restore"
    torch.manual_seed(99)  # and the network still comes from the seed alone
    again = train_superres(split, loss, scale=2, steps=2, batch=2, width=4, blocks=1, seed=3) if train == "sr" else \
        train_autoencoder(split, loss, steps=2, batch=2, width=4, latent=2, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(result.model.parameters(), again.model.parameters(), strict=True))
