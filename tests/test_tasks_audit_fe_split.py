"""Fresh-eyes audit of the training tasks: the held-out tiles a run is scored on."""

from __future__ import annotations

import torch

from patchmmd.tasks.data import load_photos, split_photos


def _photo(value: float, h: int, w: int = 64) -> torch.Tensor:
    return torch.full((3, h, w), value)


def test_max_tiles_keeps_tiles_of_every_photo_not_the_first_photos_alone() -> None:
    # --max-tiles 6 on the shipped photos scored 4 tiles of astronaut and 2 of chelsea, none of coffee (the tiles
    # were listed photo by photo); the suite's "tiles_per_image" cut did the same (its quick run judged astronaut
    # alone)
    photos = [_photo(0.1, 64), _photo(0.5, 32), _photo(0.9, 48)]  # 4, 2 and 3 tiles of 16 px
    full = split_photos(photos, 16)
    source = [round(float(t.mean()), 3) for t in full.heldout]
    assert source == [0.1, 0.5, 0.9, 0.1, 0.5, 0.9, 0.1, 0.9, 0.1]  # in turns; a photo out of tiles drops out
    for n in range(1, len(source) + 1):  # a cut is the first n of that order
        assert torch.equal(split_photos(photos, 16, max_tiles=n).heldout, full.heldout[:n])
    # each photo's tiles stay top to bottom
    ramp = torch.arange(64.0).view(1, 64, 1).expand(3, 64, 64).contiguous()
    tops = [float(t[0, 0, 0]) for t in split_photos([ramp, _photo(0.5, 32)], 16).heldout]
    assert tops == [0.0, 0.5, 16.0, 0.5, 32.0, 48.0]


def test_max_tiles_on_the_shipped_photos_draws_from_each() -> None:
    photos, _ = load_photos(None)
    tiles = split_photos(photos, 64, max_tiles=6).heldout
    edges = [p[:, :64, p.shape[-1] - max(64, round(0.25 * p.shape[-1])):][:, :, :64] for p in photos]
    # the top tile of every photo is among the six
    assert all(any(torch.equal(t, e) for t in tiles) for e in edges)
