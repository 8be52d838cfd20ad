"""Audit of the library code behind ``patchmmd theory``: options of the public kernel function."""

from __future__ import annotations

import math

import pytest
import torch

from patchmmd.theory.nngp import nngp_from_inner_products


@pytest.mark.parametrize("method", ["auto", "recursion"])
@pytest.mark.parametrize(("option", "value", "message"), [
    ("depth", 0, "depth must be an integer >= 1"),
    ("depth", -1, "depth must be an integer >= 1"),
    ("dim", 0, "dim must be an integer >= 1"),
    ("sigma_w2", -2.0, "sigma_w2 must be a finite number > 0"),
    ("sigma_w2", math.nan, "sigma_w2 must be a finite number > 0"),
    ("sigma_b2", -1.0, "sigma_b2 must be a finite number >= 0"),
])
def test_nngp_from_inner_products_refuses_options_of_no_network(option: str, value: float, message: str,
                                                                 method: str) -> None:
    # before: depth=0 gave p.q/d by the closed form and sigma_w2 p.q/d by the recursion (two numbers for one call),
    # negative variances gave negative or zero kernel values, dim=0 a ZeroDivisionError; all without a word
    pp, qq, pq = (torch.tensor(v, dtype=torch.float64) for v in (4.0, 9.0, 3.0))
    options = {"dim": 6, "depth": 2, "sigma_w2": 2.0, "sigma_b2": 0.0, option: value}
    with pytest.raises(ValueError, match=message):
        nngp_from_inner_products(pp, qq, pq, method=method, **options)  # type: ignore[arg-type]


def test_nngp_from_inner_products_valid_options_unchanged() -> None:
    pp, qq, pq = (torch.tensor(v, dtype=torch.float64) for v in (4.0, 9.0, 0.0))
    v = nngp_from_inner_products(pp, qq, pq, dim=6, depth=1)  # (2 * 3 / 6) * kappa1(0) = 1/pi
    assert float(v) == pytest.approx(1 / math.pi, rel=1e-12)
    r = nngp_from_inner_products(pp, qq, pq, dim=6, depth=3, sigma_w2=3.0, method="recursion")
    c = nngp_from_inner_products(pp, qq, pq, dim=6, depth=3, sigma_w2=3.0, method="closed_form")
    assert float(r) == pytest.approx(float(c), rel=1e-12)
