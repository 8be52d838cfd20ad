"""benchmarks/tf32_emulation.py: its TF32 rounding against hand-computed bit patterns, its emulation of the
TF32 operations against operands rounded by hand, and its command line. Nothing here runs the measurement."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_benchmarks import _load


@pytest.fixture(scope="module")
def tf32() -> ModuleType:
    return _load("tf32_emulation")


def _bits(patterns: list[int]) -> torch.Tensor:
    """float32 tensor with these bit patterns."""
    return torch.from_numpy(np.array(patterns, dtype=np.uint32).view(np.float32).copy())


def _patterns(t: torch.Tensor) -> list[int]:
    return [int(b) for b in t.numpy().view(np.uint32)]


#: (input bits, nearest-even TF32 bits, truncated TF32 bits); TF32 keeps 10 of float32's 23 mantissa bits.
CASES = [
    (0x3F800000, 0x3F800000, 0x3F800000),  # 1.0: already TF32
    (0x3F802000, 0x3F802000, 0x3F802000),  # 1 + 2^-10: already TF32
    (0x3F801000, 0x3F800000, 0x3F800000),  # 1 + 2^-11: a tie, to the even 1.0
    (0x3F803000, 0x3F804000, 0x3F802000),  # 1 + 3 2^-11: a tie, to the even 1 + 2^-9
    (0x3F801001, 0x3F802000, 0x3F800000),  # just above the tie: up
    (0x3F800FFF, 0x3F800000, 0x3F800000),  # just below it: down
    (0xBF803000, 0xBF804000, 0xBF802000),  # negative: the magnitude rounds, the sign stays
    (0x3FFFFFFF, 0x40000000, 0x3FFFE000),  # 2 - 2^-23: the carry goes into the exponent (2.0)
    (0x3E99999A, 0x3E99A000, 0x3E998000),  # 0.3 -> 0.300048828125 (0x1.334p-2)
    (0x3DCCCCCD, 0x3DCCC000, 0x3DCCC000),  # 0.1 -> 0.0999755859375 (0x1.998p-4)
    (0x7F7FFFFF, 0x7F800000, 0x7F7FE000),  # float32's largest is beyond TF32's: infinity
    (0x00000001, 0x00000000, 0x00000000),  # the smallest subnormal: 0
    (0x00003000, 0x00004000, 0x00002000),  # a subnormal tie (3 2^-137), to even
    (0x80000000, 0x80000000, 0x80000000),  # -0.0 stays -0.0
    (0x7F800000, 0x7F800000, 0x7F800000),  # +inf
    (0xFF800000, 0xFF800000, 0xFF800000),  # -inf
]


@pytest.mark.parametrize("rounding,column", [("nearest", 1), ("truncate", 2)])
def test_round_tf32_hand_computed_bit_patterns(tf32, rounding, column):
    x = _bits([c[0] for c in CASES])
    assert _patterns(tf32.round_tf32(x, rounding)) == [c[column] for c in CASES]
    nan = tf32.round_tf32(_bits([0x7FC00001]), rounding)
    assert torch.isnan(nan).all()


def test_round_tf32_of_floats(tf32):
    assert tf32.round_tf32(torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 0.3])).tolist() == [
        1.0, 1.001953125, 0.300048828125]
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    r = tf32.round_tf32(x)
    assert (r.view(torch.int32) & 0x1FFF).eq(0).all()  # 10 mantissa bits left
    assert ((r - x).abs() <= x.abs() * 2**-11).all()  # within half a TF32 unit
    x64 = x.double()
    assert tf32.round_tf32(x64) is x64  # other dtypes unchanged
    with pytest.raises(ValueError, match="rounding"):
        tf32.round_tf32(x, "up")


def test_reference_round_agrees_and_validation_passes(tf32):
    """The independent NumPy rounding agrees on the hand cases, and the script's own checks of the emulation
    (convolution forward and backward, transposed convolution, GEMMs against float64 on hand-rounded operands)
    pass."""
    x = _bits([c[0] for c in CASES])
    assert _patterns(torch.from_numpy(tf32.reference_round(x.numpy()))) == [c[1] for c in CASES]
    rows = tf32.validate("nearest")
    assert {name for name, *_ in rows} >= {"conv2d", "conv2d backward (input)", "conv_transpose2d", "matmul (bmm)"}


def test_emulation_rounds_what_each_setting_says(tf32):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(1, 3, 9, 9, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    a, b = torch.randn(5, 7, generator=g), torch.randn(7, 6, generator=g)
    taps = torch.randn(3, 1, 3, 1, generator=g)
    r = tf32.round_tf32
    plain_conv, plain_mm, plain_dw = F.conv2d(x, w), a @ b, F.conv2d(x, taps, groups=3)
    rounded_conv, rounded_mm = F.conv2d(r(x), r(w)), r(a) @ r(b)
    rounded_dw = F.conv2d(r(x), r(taps), groups=3)
    assert not torch.equal(rounded_conv, plain_conv) and not torch.equal(rounded_mm, plain_mm)
    assert not torch.equal(rounded_dw, plain_dw)
    with tf32.TF32Emulation(conv=True, matmul=False) as mode:  # PyTorch's default on an Ampere GPU
        conv, mm, dw = F.conv2d(x, w), a @ b, F.conv2d(x, taps, groups=3)
    assert torch.equal(conv, rounded_conv) and torch.equal(mm, plain_mm) and torch.equal(dw, plain_dw)
    assert mode.counts == {"convolution": 1, tf32.EXACT_DEPTHWISE: 1}
    with tf32.TF32Emulation(conv=True, matmul=True) as mode:
        mm, dw = a @ b, F.conv2d(x, taps, groups=3)
    assert torch.equal(mm, rounded_mm) and torch.equal(dw, plain_dw)  # depthwise: PyTorch's own kernel, exact
    assert mode.counts == {"mm": 1, tf32.EXACT_DEPTHWISE: 1}
    with tf32.TF32Emulation(conv=True, matmul=True, depthwise=True):
        dw = F.conv2d(x, taps, groups=3)
    assert torch.equal(dw, rounded_dw)


def test_help_parses(tf32, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tf32.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--threads" in out and "--rounding" in out and "--fp64" in out
    args = tf32.build_parser().parse_args([])
    assert (args.threads, args.rounding, args.fp64) == (2, "nearest", False)
    with pytest.raises(SystemExit):
        tf32.build_parser().parse_args(["--rounding", "up"])


def test_gpu_mode_settings_restore_and_columns(tf32, monkeypatch):
    """``--device cuda``: the precision settings are set for the block and restored after it, even on an error,
    and the measurement's columns hold every quantity (the compiled column the values only). The columns are
    computed here on the CPU (the settings exist in CPU builds too), on two small crops, without compiling."""
    before = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    with tf32.cuda_precision(False, "high"):
        assert (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == (False, "high")
    with pytest.raises(RuntimeError), tf32.cuda_precision(not before[0], "medium"):
        raise RuntimeError
    assert (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == before
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    y, x, _ = tf32.photo_pairs()
    x, y = x[:2, :, :40, :40].contiguous(), y[:2, :, :40, :40].contiguous()
    columns = tf32.measure_on_gpu(x, y, "cpu")
    assert list(columns) == ["CPU fp32", "GPU ieee", "GPU default", "GPU high", "GPU compiled, no grad"]
    truth, _ = columns["CPU fp32"]
    assert truth["mmdpp default"].dtype == torch.float64 and "grad loss" in truth
    assert set(columns["GPU compiled, no grad"][1]) == set(tf32.COMPILED_JOBS)
    for name, (_, values) in columns.items():
        for key, v in values.items():  # float32 against float64: rounding only
            t = truth[key]
            assert float((v.double() - t).norm() / t.norm()) < 1e-4, (name, key)
    rows = tf32.report(columns, 1, missing="-")
    assert rows[0].count("|") == len(columns) + 2 and any("| - |" in r for r in rows)
    with pytest.raises(SystemExit, match="no CUDA device"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        tf32.main(["--device", "cuda"])
