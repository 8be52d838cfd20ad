"""Every option is checked: type, range and consistency, with a message naming the option."""

from __future__ import annotations

import math

import pytest
import torch

import patchmmd
from patchmmd.theory.cnn import RandomCNNDistance, VGGDistance, load_vgg16_weights, vgg16_random_weights
from patchmmd.theory.nngp import kappa1, nngp_kernel

X = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
Y = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_size": 1}, "base_size must be an integer >= 3"),
        ({"base_size": 2, "local_patch_size": 1}, "base_size must be an integer >= 3"),
        ({"min_size": 1}, "min_size must be an integer >= 3"),
        ({"num_scales": 10**9}, "num_scales must be an integer between 1 and 32"),
        ({"seed": 2**64}, r"seed must be an integer with 0 <= seed < 2\*\*63"),
        ({"seed": -1}, "seed must be an integer with 0 <= seed"),
        ({"seed": True}, "seed must be an integer"),
        ({"center": "no"}, "center must be True or False"),
        ({"center": None}, "center must be True or False"),
        ({"patch_size": 1}, "patch_size=1 with center=True"),
        ({"sigma": 1e-30}, "sigma must be a finite number between"),
        ({"local_sigma": 1e30}, "local_sigma must be a finite number between"),
        ({"weight_l2": 0, "weight_local": 0, "weight_mmd": 0}, "at least one must be > 0"),
        ({"scale_weights": "ab"}, "scale_weights must be a finite number >= 0"),
        ({"scale_weights": (0, 0)}, "scale_weights must not all be 0"),
        ({"value_range": (-1e38, 1e38)}, "value_range=.* is too wide"),
        ({"value_range": (1e6, 1e6 + 0.01)}, "value_range=.* is too narrow"),
        ({"value_range": (False, True)}, "value_range must be a pair"),
    ],
)
def test_bad_mmdpp_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        patchmmd.mmdpp(X, Y, **kwargs)


def test_base_size_too_small_for_the_image_is_a_clear_error():
    x = torch.rand(1, 3, 5, 5)  # base_size=3 brings 5x5 down by round(5/3) = 2, to 2x2 < the 3x3 patches
    with pytest.raises(ValueError, match="base_size=3 brings the 5x5 image down to 2x2 pixels"):
        patchmmd.mmdpp(x, x, base_size=3)
    assert torch.isfinite(patchmmd.mmdpp(X, Y, base_size=3)).all()  # 24 / 3: 8x8 levels are fine


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 1}, "patch_size=1 with center=True compares nothing"),
        ({"patch_size": 1, "estimator": "rff"}, "patch_size=1 with center=True"),
        ({"center": "no"}, "center must be True or False"),
        ({"center": 1}, "center must be True or False"),
        ({"seed": 2**64}, "seed must be an integer with 0 <= seed < 2"),
        ({"seed": -1}, "seed must be"),
        ({"sigma": 1e-300}, "sigma must be a finite number between"),
    ],
)
def test_bad_patch_mmd_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        patchmmd.patch_mmd(X, Y, **kwargs)
    with pytest.raises(ValueError, match=match):
        patchmmd.PatchMMD(**kwargs)


def test_patch_size_one_without_centring_is_allowed():
    assert float(patchmmd.patch_mmd(X, Y, patch_size=1, center=False)[0]) > 0
    assert float(patchmmd.PatchMMD(patch_size=1, center=False)(X, Y)) > 0


def test_seed_range_ends_are_distinct_and_accepted():
    a = patchmmd.patch_mmd(X, Y, estimator="rff", seed=0)
    b = patchmmd.patch_mmd(X, Y, estimator="rff", seed=2**63 - 1)
    assert torch.isfinite(b).all() and not torch.equal(a, b)


def test_random_cnn_and_vgg_seeds_checked():
    with pytest.raises(ValueError, match="seed must be an integer with 0 <= seed"):
        RandomCNNDistance(width=4, seed=-1)
    with pytest.raises(ValueError, match="seed must be"):
        vgg16_random_weights(seed=2**64)
    with pytest.raises(ValueError, match="normalize must be True or False"):
        VGGDistance(normalize="yes")


@pytest.mark.parametrize("bad", [2.0, -3.0, math.nan, 1.01])
def test_kappa1_refuses_non_cosines(bad):
    with pytest.raises(ValueError, match="c "):
        kappa1(torch.tensor([0.5, bad], dtype=torch.float64))


def test_kappa1_input_types_and_rounding_tolerance():
    with pytest.raises(TypeError, match=r"c must be a torch\.Tensor"):
        kappa1(0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        kappa1(torch.tensor([1]))
    v = kappa1(torch.tensor([1.0 + 1e-7, -1.0 - 1e-7], dtype=torch.float32))  # rounding noise: clamped
    assert v.tolist() == pytest.approx([1.0, 0.0])


@pytest.mark.parametrize(
    ("P", "exc", "match"),
    [
        (torch.tensor([[1.0, math.nan]]), ValueError, "P contains NaN or Inf"),
        (torch.ones(2, 3).numpy(), TypeError, "P must be a torch.Tensor"),
        (torch.ones(3), ValueError, "P must have shape"),
        (torch.ones(2, 3, dtype=torch.int64), TypeError, "P must be a floating-point"),
    ],
)
def test_nngp_kernel_checks_its_inputs(P, exc, match):
    with pytest.raises(exc, match=match):
        nngp_kernel(P, torch.ones(2, 3 if not hasattr(P, "shape") or len(P.shape) < 2 else P.shape[-1]), depth=1)


def _vgg_state(bad_key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    state = {}
    for idx, (w, b) in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), vgg16_random_weights(), strict=True):
        state[f"features.{idx}.weight"], state[f"features.{idx}.bias"] = w.float(), b.float()
    state[bad_key] = value
    return state


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda t: t.to(torch.complex64), "must be a real floating-point tensor"),
        (lambda t: t.to(torch.int32), "must be a real floating-point tensor"),
        (lambda t: t.masked_fill(t > 0, math.nan), "contains NaN or Inf"),
    ],
)
def test_vgg_weight_files_must_be_real_finite(tmp_path, make, match):
    path = tmp_path / "vgg.pt"
    w = vgg16_random_weights()[1][0].float()
    torch.save(_vgg_state("features.2.weight", make(w)), path)
    with pytest.raises(ValueError, match=f"vgg.pt.*features.2.weight {match}"):
        load_vgg16_weights(path)


def test_baseline_weight_files_must_be_real_finite(tmp_path):
    from patchmmd.metrics.baselines import WeightsError, load_weights

    path = tmp_path / "lin.pt"
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1, dtype=torch.complex64)}, path)
    with pytest.raises(WeightsError, match=r"lin\.pt: lin0\.model\.1\.weight has dtype torch\.complex64"):
        load_weights(path, "heads", "lpips-vgg", "heads")
    torch.save({"w": torch.tensor([1.0, math.inf])}, path)
    with pytest.raises(WeightsError, match="w contains NaN or Inf"):
        load_weights(path, "heads", "lpips-vgg", "heads")


# ------------------------------------------------------------------------------- the CLI: one line, no traceback
def _pngs(tmp_path, size=32):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    (tmp_path / "ref").mkdir()
    (tmp_path / "dist").mkdir()
    for folder in ("ref", "dist"):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / folder / "a.png")
    return tmp_path / "ref", tmp_path / "dist"


def _run(*args):
    from click.testing import CliRunner

    from patchmmd.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("option", ["base_size=1", "seed=18446744073709551616", "center=no"])
def test_cli_bad_option_is_one_line(tmp_path, option):
    ref, dist = _pngs(tmp_path)
    for args in (("compare", ref / "a.png", dist / "a.png", "-o", option),
                 ("score", ref, dist, "--out", tmp_path / "s.csv", "-o", option)):
        result = _run(*args)
        assert result.exit_code == 2, result.output  # an option value out of range: a usage error
        assert isinstance(result.exception, SystemExit)  # click's exit, not an exception escaping the command
        assert "Traceback" not in result.output
        assert option.split("=")[0] in result.output
        assert [line for line in result.output.splitlines() if "rror" in line], result.output


def test_cli_maps_any_library_exception_to_one_line(tmp_path, monkeypatch):
    from patchmmd.metrics import registry

    def broken(x, y):
        raise RuntimeError("Padding size should be less\nthan the input")

    monkeypatch.setattr(registry, "get_metric", lambda name, **options: broken)
    ref, dist = _pngs(tmp_path)
    result = _run("compare", ref / "a.png", dist / "a.png")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.strip() == "patchmmd: error: Padding size should be less than the input (RuntimeError)"
    result = _run("score", ref, dist, "--out", tmp_path / "s.csv")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Padding size should be less than the input (RuntimeError)" in result.output
    monkeypatch.setenv("PATCHMMD_DEBUG", "1")
    result = _run("compare", ref / "a.png", dist / "a.png")
    assert isinstance(result.exception, RuntimeError)  # with the debug switch: the exception itself


# ---------------------------------------------------------------------------------- rendezvous on loopback
def test_rendezvous_defaults_to_loopback_on_one_machine(monkeypatch):
    import torch.distributed as dist

    from patchmmd.scoring import distributed

    two = distributed.DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert distributed.rendezvous_address(two, {}) == "127.0.0.1"
    assert distributed.rendezvous_address(two, {"MASTER_ADDR": "node7"}) == "node7"
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        distributed.rendezvous_address(distributed.DistEnv(rank=3, world_size=4, local_rank=1, local_world_size=2), {})

    seen, stores = {}, []
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29517")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda **kw: seen.update(kw, addr=distributed.os.environ["MASTER_ADDR"]))
    monkeypatch.setattr(dist, "TCPStore", lambda *a, **kw: stores.append((a, kw)) or "store")
    monkeypatch.setattr(distributed, "_collective_device", None)
    assert distributed.init("cpu", two) == "gloo"
    # rank 1 on loopback: a client of rank 0's loopback-only store, handed to init_process_group
    assert seen["addr"] == "127.0.0.1" and seen["store"] == "store" and "init_method" not in seen
    assert stores == [(("127.0.0.1", 29517, 2, False, seen["timeout"]), {})]
    seen.clear()
    monkeypatch.setenv("MASTER_ADDR", "node7")  # another host: PyTorch's env:// rendezvous as it is
    assert distributed.init("cpu", two) == "gloo"
    assert seen["addr"] == "node7" and seen["init_method"] == "env://" and len(stores) == 1


def test_weight_files_with_sparse_float8_or_twice_named_tensors_are_weights_errors(tmp_path):
    from patchmmd.metrics.weights import WeightsError, load_weights

    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2).to_sparse()}, path)
    with pytest.raises(WeightsError, match=r"w is a torch\.sparse_coo tensor"):
        load_weights(path, "heads", "lpips-vgg", "weights")
    if hasattr(torch, "float8_e4m3fn"):
        torch.save({"w": torch.ones(2).to(torch.float8_e4m3fn)}, path)
        with pytest.raises(WeightsError, match=r"w has dtype torch\.float8_e4m3fn"):
            load_weights(path, "heads", "lpips-vgg", "weights")
    # "w" and "module.w" would both become "w": one of them silently lost
    torch.save({"w": torch.ones(1), "module.w": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="holds w twice"):
        load_weights(path, "heads", "lpips-vgg", "weights")
    torch.save({"module.w": torch.zeros(1), "module.b": torch.ones(1)}, path)
    assert sorted(load_weights(path, "heads", "lpips-vgg", "weights")) == ["b", "w"]


def test_weight_files_others_can_write_are_refused(tmp_path):
    """Whoever can write a weight file (or replace it in its folder) decides what the metric computes: only files
    the user controls are read (owned by the user or root, writable by no one else; a sticky folder is fine)."""
    import os
    import stat

    from patchmmd.metrics.weights import WeightsError, load_weights

    if not hasattr(os, "geteuid"):
        pytest.skip("POSIX owners and modes only")
    folder = tmp_path / "w"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    path = folder / "head.pt"
    torch.save({"w": torch.ones(2)}, path)
    path.chmod(0o644)
    assert load_weights(path, what="a head", metric="demo", option="weights")["w"].tolist() == [1.0, 1.0]
    path.chmod(0o666)
    with pytest.raises(WeightsError, match=r"demo: weights file .*head\.pt: the file is writable by others \(mode 666\)"
                                           r".*`chmod go-w` it"):
        load_weights(path, what="a head", metric="demo", option="weights")
    path.chmod(0o644)
    folder.chmod(0o777)
    with pytest.raises(WeightsError, match=r"its folder .* is writable by others \(mode 777\)"):
        load_weights(path, what="a head", metric="demo", option="weights")
    folder.chmod(0o777 | stat.S_ISVTX)  # like /tmp: others cannot replace a file they do not own
    assert load_weights(path, what="a head", metric="demo", option="weights")["w"].tolist() == [1.0, 1.0]
    folder.chmod(0o755)
    link = tmp_path / "link.pt"  # a link is followed: the file it leads to is what is checked
    link.symlink_to(path)
    path.chmod(0o646)
    with pytest.raises(WeightsError, match="the file is writable by others"):
        load_weights(link, what="a head", metric="demo", option="weights")
    path.chmod(0o644)
    if os.geteuid() == 0:  # root can give the file away: a file of another user is refused, even to root
        os.chown(path, 65534, -1)
        with pytest.raises(WeightsError, match="the file is owned by uid 65534, not by you"):
            load_weights(path, what="a head", metric="demo", option="weights")


def test_a_folder_given_as_a_weight_file_is_named_as_a_folder(tmp_path) -> None:
    """It was reported as "file not found", which sends the user looking for a missing file."""
    from patchmmd.metrics.weights import WeightsError, WeightsFileNotFoundError, load_weights

    with pytest.raises(WeightsError, match=r"demo: weights .* is a folder; give the file itself \(a head\)") as e:
        load_weights(tmp_path, what="a head", metric="demo", option="weights")
    assert not isinstance(e.value, WeightsFileNotFoundError)


# ------------------------------------------------------------------------------- registry options of the metrics
@pytest.mark.parametrize("win_size", [True, 11.7, 11.0, "11", 4, 0, -3, math.nan])
@pytest.mark.parametrize("name", ["ssim", "ssim-downsampled", "ms-ssim"])
def test_ssim_win_size_must_be_an_odd_positive_integer(name, win_size):
    """``win_size=True`` was read as a 1 px window (a different score), 11.7 as 11, "11" as 11; an even or
    non-positive size failed only when called, with pytorch-msssim's message. Refused when built, naming it."""
    pytest.importorskip("pytorch_msssim")
    from patchmmd.metrics.classic import ms_ssim, ssim
    from patchmmd.metrics.registry import get_metric

    with pytest.raises(ValueError, match="win_size must be"):
        get_metric(name, win_size=win_size)
    x = torch.rand(1, 3, 176, 176, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="win_size must be"):
        (ms_ssim if name == "ms-ssim" else ssim)(x, x, win_size=win_size)  # type: ignore[arg-type]


def test_ssim_small_odd_windows_still_work():
    pytest.importorskip("pytorch_msssim")
    from patchmmd.metrics.registry import get_metric

    x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    for win in (1, 3, 11):  # 1: what the task report uses for images under 3 px
        assert get_metric("ssim", win_size=win)(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert get_metric("ms-ssim", win_size=1)(x, x).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["random-cnn", "random-cnn-zero-mean", "infinite-cnn", "random-vgg", "vgg"])
def test_theory_registry_metrics_refuse_a_reduction(name):
    """A registry metric gives one value per image (docs/theory.md: "the registry metrics keep giving (N,)");
    ``reduction="mean"`` made these return a scalar. Refused, as the package's own distances refuse it."""
    from patchmmd.metrics.registry import get_metric

    with pytest.raises(TypeError, match=f"{name} takes no reduction option"):
        get_metric(name, reduction="mean")


@pytest.mark.parametrize("bad", [True, 1, math.nan, ["a.pth"]])
def test_weight_file_options_that_are_not_paths_are_weights_errors(bad):
    """A non-path ``backbone=`` / ``weights=`` (e.g. ``weights=true`` or ``weights=1`` on the command line) raised
    pathlib's TypeError, which names no option; every failure of the reader is a WeightsError naming it."""
    from patchmmd.metrics.registry import get_metric
    from patchmmd.metrics.weights import WeightsError, load_weights

    with pytest.raises(WeightsError, match="demo': weights must be a file path"):
        load_weights(bad, what="a head", metric="demo", option="weights")
    with pytest.raises(WeightsError, match="'lpips-alex': backbone must be a file path"):
        get_metric("lpips-alex", backbone=bad, weights="head.pth")
