"""Numeric options given as NumPy scalars (what a sweep over ``numpy.arange`` or a loaded config hands over) are
accepted wherever a Python ``int`` / ``float`` / ``bool`` is, and are stored as the plain Python value: a
configuration made from them prints, compares, hashes and goes into a JSON record exactly as one made from
plain numbers, and computes the same distance. What is not a number of the right kind is still refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import patchmmd
from patchmmd.core.mmdpp import MMDPPConfig
from patchmmd.core.validation import (
    check_bool,
    check_nonnegative_float,
    check_patch_size,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from patchmmd.evaluation.suite import SuiteConfig
from patchmmd.io import check_max_pixels
from patchmmd.scoring.jobs import PairTask, shard
from patchmmd.theory import cnn, nngp

X = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
Y = (X + 0.05 * torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


def _plain_types(values: dict[str, object]) -> dict[str, type]:
    return {k: type(v) for k, v in values.items()}


@pytest.mark.parametrize("kind", [np.int8, np.int32, np.int64, np.uint16, np.uint64])
def test_numpy_integers_are_integers(kind):
    got = check_positive_int("window", kind(16))
    assert got == 16 and type(got) is int
    assert type(check_seed(kind(7))) is int and check_seed(kind(7)) == 7
    assert type(check_patch_size(kind(5))) is int


@pytest.mark.parametrize("kind", [np.float16, np.float32, np.float64, np.int64])
def test_numpy_reals_are_numbers(kind):
    got = check_positive_float("sigma_w2", kind(2))
    assert got == 2.0 and type(got) is float
    assert type(check_nonnegative_float("weight_l2", kind(0))) is float


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        # a float, even a whole one, is no integer
        (lambda v: check_positive_int("window", v), np.float64(16.0), "window must be an integer >= 1, got np.float64"),
        (lambda v: check_positive_int("window", v), np.bool_(True), "window must be an integer >= 1"),
        (lambda v: check_positive_int("window", v), True, "window must be an integer >= 1, got True"),
        (lambda v: check_positive_int("window", v), torch.tensor(16), r"window must be an integer >= 1, got tensor"),
        (lambda v: check_positive_int("window", v), np.int64(0), "window must be an integer >= 1"),
        (lambda v: check_seed(v), np.uint64(2**63), r"seed must be an integer with 0 <= seed < 2\*\*63"),
        (lambda v: check_seed(v), np.int64(-1), r"seed must be an integer with 0 <= seed < 2\*\*63"),
        (lambda v: check_patch_size(v), np.int64(4), "patch_size must be odd"),
        (lambda v: check_positive_float("sigma_w2", v), np.float32("nan"), "sigma_w2 must be a finite number > 0"),
        (lambda v: check_positive_float("sigma_w2", v), np.float64("inf"), "sigma_w2 must be a finite number > 0"),
        (lambda v: check_positive_float("sigma_w2", v), np.bool_(True), "sigma_w2 must be a finite number > 0"),
        (lambda v: check_nonnegative_float("weight_l2", v), np.float32(-1), "weight_l2 must be a finite number >= 0"),
        (lambda v: check_bool("center", v), np.int64(1), "center must be True or False"),
        (lambda v: check_bool("center", v), "True", "center must be True or False"),
    ],
)
def test_what_is_not_a_number_of_the_right_kind_is_still_refused(check, value, message):
    with pytest.raises(ValueError, match=f"^{message}"):  # the check's own message, naming the option
        check(value)


def test_numpy_bool_is_a_bool():
    assert check_bool("center", np.bool_(False)) is False


def test_mmdpp_config_from_numpy_scalars_is_the_config_from_plain_numbers():
    plain = MMDPPConfig(patch_size=5, sigma=(0.03, 0.06), window=16, stride=8, num_features=256, seed=3,
                        weight_mmd=10.0, weight_ssim=(0.5, 0.25), shift_radius=2, subpixel=False, base_size=64,
                        num_scales=3, min_size=32, scale_weights=(1.0, 0.5, 0.25), local_sigma=0.2,
                        tolerance_window=8, contrast_floor=0.01)
    numpy = MMDPPConfig(
        patch_size=np.int64(5), sigma=(np.float64(0.03), np.float32(0.06)),
        window=np.int32(16), stride=np.int64(8), num_features=np.int64(256), seed=np.uint32(3),
        weight_mmd=np.float32(10), weight_ssim=(np.float64(0.5), np.float32(0.25)), shift_radius=np.int8(2),
        subpixel=np.bool_(False), base_size=np.int64(64), num_scales=np.int64(3), min_size=np.int16(32),
        scale_weights=np.array([1.0, 0.5, 0.25]), local_sigma=np.float64(0.2), tolerance_window=np.int64(8),
        contrast_floor=np.float32(0.01),
    )
    fields = dataclasses.asdict(numpy)
    for name, value in fields.items():  # every stored number is a plain Python one
        values = value if isinstance(value, tuple) else (value,)
        assert all(type(v) in (int, float, bool, str, type(None)) for v in values), (name, value)
    assert json.dumps(fields)  # NumPy scalars would make this raise
    # float32 numbers keep their float32 value (0.06 is not exactly representable): equal to the plain
    # config once the plain one is given the same values
    assert numpy == plain.replace(sigma=(0.03, float(np.float32(0.06))), weight_ssim=(0.5, 0.25),
                                  contrast_floor=float(np.float32(0.01)))
    assert hash(numpy) == hash(dataclasses.replace(numpy))


def test_mmdpp_with_numpy_options_computes_the_same_distance():
    plain = patchmmd.core.mmdpp(X, Y, patch_size=5, num_features=64, seed=2, window=16, stride=8, shift_radius=1)
    numpy = patchmmd.core.mmdpp(X, Y, patch_size=np.int64(5), num_features=np.int64(64), seed=np.int64(2),
                                window=np.int64(16), stride=np.int32(8), shift_radius=np.int64(1))
    torch.testing.assert_close(numpy, plain, rtol=0, atol=0)


def test_patch_mmd_and_its_module_with_numpy_options():
    opts = dict(patch_size=3, sigma=0.06, window=16, stride=8, estimator="rff", num_features=64, seed=1)
    np_opts = dict(patch_size=np.int64(3), sigma=np.float32(0.06), window=np.int64(16), stride=np.int64(8),
                   estimator="rff", num_features=np.int64(64), seed=np.int64(1))
    want = patchmmd.patch_mmd(X, Y, **opts)
    got = patchmmd.patch_mmd(X, Y, **{**np_opts, "sigma": np.float64(0.06)})  # float32(0.06) is another width
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    module = patchmmd.PatchMMD(**np_opts)
    assert all(type(module.options[k]) in (int, float, str) for k in np_opts), _plain_types(module.options)
    assert json.dumps({k: module.options[k] for k in np_opts})
    assert "np." not in repr(module) and "numpy" not in repr(module)


def test_local_distance_with_numpy_options():
    want = patchmmd.local_distance(X, Y, patch_size=5, sigma=0.2)
    got = patchmmd.local_distance(X, Y, patch_size=np.int64(5), sigma=np.float64(0.2))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_theory_modules_with_numpy_options():
    m = cnn.RandomCNNDistance(width=np.int64(8), depth=np.int64(2), kernel_size=np.int64(3), seed=np.int64(4),
                              sigma_w2=np.float32(2), pooling=(np.int64(16), np.int64(8)))
    ref = cnn.RandomCNNDistance(width=8, depth=2, kernel_size=3, seed=4, sigma_w2=2.0, pooling=(16, 8))
    assert (type(m.width), type(m.depth), type(m.kernel_size), type(m.seed)) == (int, int, int, int)
    assert m.pooling == (16, 8) and all(type(v) is int for v in m.pooling)  # type: ignore[union-attr]
    torch.testing.assert_close(m(X, Y), ref(X, Y), rtol=0, atol=0)
    k = nngp.NNGPKernel(np.int64(2), sigma_w2=np.float32(2), sigma_b2=np.float64(0.1))
    assert (type(k.depth), type(k.sigma_w2), type(k.sigma_b2)) == (int, float, float)
    want = nngp.infinite_cnn_distance(X, Y, depth=2, kernel_size=3, pooling="global")
    got = nngp.infinite_cnn_distance(X, Y, depth=np.int64(2), kernel_size=np.int64(3), pooling="global")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_theory_modules_check_out_of_range_when_built():
    with pytest.raises(ValueError, match="out_of_range"):
        cnn.RandomCNNDistance(width=8, out_of_range="clip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out_of_range"):
        cnn.VGGDistance(out_of_range="clip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out_of_range"):
        nngp.InfiniteCNNDistance(out_of_range="clip")  # type: ignore[arg-type]


def test_job_and_io_options_take_numpy_integers():
    tasks = [PairTask(i, str(i), "", "", None, None) for i in range(7)]  # type: ignore[arg-type]
    assert [t.index for t in shard(tasks, np.int64(2), np.int64(3))] == [2, 5]
    with pytest.raises(ValueError, match="world_size"):
        shard(tasks, 0, True)  # a bool is not a process count
    with pytest.raises(ValueError, match="rank"):
        shard(tasks, np.int64(3), 3)
    assert check_max_pixels(np.int64(1000)) == 1000 and type(check_max_pixels(np.int64(1000))) is int
    cfg = SuiteConfig(task_seeds=np.int64(2))
    assert type(cfg.task_seeds) is int and cfg.training_seeds == (0, 1)
