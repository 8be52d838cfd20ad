"""Second audit of the metrics library (:mod:`patchmmd.metrics`), as a user of torchmetrics / piq / pyiqa meets it:
built deep baselines that pickle and copy, inputs that are not tensors, weight files that would have given negative
or NaN distances, checkpoints with more than tensors, options that silently changed a metric, PSNR's cap.

Everything runs on small random weight files (no published weights, no download).
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch

from patchmmd.metrics.classic import psnr
from patchmmd.metrics.registry import get_metric
from patchmmd.metrics.weights import WeightsError, load_weights
from test_metrics_audit import random_weight_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The random weight files of the first metrics audit, and LPIPS-vgg heads."""
    d = tmp_path_factory.mktemp("audit2_weights")
    g = torch.Generator().manual_seed(1)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
                for k, c in enumerate((64, 128, 256, 512, 512))}, d / "vgg.pth")
    return {**random_weight_files(d), "vgg_head": d / "vgg.pth"}


_DEEP = {"lpips-alex": ("alex", "alex_head"), "lpips-vgg": ("vgg", "vgg_head"), "dists": ("vgg", "dists")}


def _deep(name: str, files: dict[str, Path]) -> object:
    backbone, head = _DEEP[name]
    return get_metric(name, backbone=str(files[backbone]), weights=str(files[head]))


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 40, 44, generator=g)
    return x, (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ---------------------------------------------------------------------------------------- built deep baselines


@pytest.mark.parametrize("name", list(_DEEP))
def test_built_deep_baselines_pickle_and_deepcopy_as_the_other_metrics_do(name: str, files: dict[str, Path]) -> None:
    # they were closures ("Can't pickle local object 'module_metric.<locals>.metric'"), and copy.deepcopy returned
    # the same function, sharing its module
    m = _deep(name, files)
    x, y = _pair()
    want = m(x, y)  # type: ignore[operator]
    back = pickle.loads(pickle.dumps(m))
    torch.testing.assert_close(back(x, y), want, rtol=0, atol=0)
    dup = copy.deepcopy(m)
    assert dup.module is not m.module  # type: ignore[attr-defined]
    torch.testing.assert_close(dup(x, y), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(_DEEP))
def test_deep_baselines_name_an_argument_that_is_not_a_tensor(name: str, files: dict[str, Path]) -> None:
    # an AttributeError ("'numpy.ndarray' object has no attribute 'requires_grad'") stopped them before their checks
    m = _deep(name, files)
    x, _ = _pair()
    with pytest.raises(TypeError, match=r"^x must be a torch\.Tensor .* got ndarray$"):
        m(x.numpy(), x.numpy())  # type: ignore[operator]
    with pytest.raises(TypeError, match=r"^y must be a torch\.Tensor .* got list$"):
        m(x, [0.5])  # type: ignore[operator]


@pytest.mark.parametrize("name", list(_DEEP))
def test_a_call_on_meta_tensors_leaves_a_deep_baseline_usable(name: str, files: dict[str, Path]) -> None:
    # the metric moved its module to the inputs' device first: to "meta", where the weights were lost for good, and
    # every later call failed ("Cannot copy out of meta tensor")
    m = _deep(name, files)
    x, y = _pair()
    want = m(x, y)  # type: ignore[operator]
    with pytest.raises(RuntimeError):
        m(torch.rand(1, 3, 40, 40, device="meta"), torch.rand(1, 3, 40, 40, device="meta"))  # type: ignore[operator]
    torch.testing.assert_close(m(x, y), want, rtol=0, atol=0)  # type: ignore[operator]


# ------------------------------------------------------------------------------------------------- weight files


def test_lpips_heads_with_negative_weights_are_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    # they gave negative distances (trained heads are clamped at 0 by the lpips package)
    head = torch.load(files["alex_head"], weights_only=True)
    head["lin2.model.1.weight"] = head["lin2.model.1.weight"] - 0.5
    torch.save(head, tmp_path / "neg.pth")
    with pytest.raises(WeightsError, match=r"lpips-alex: weights file .*neg\.pth: lin2\.model\.1\.weight has negative "
                                           r"values \(min -0\.\d+\); LPIPS's linear heads are non-negative"):
        get_metric("lpips-alex", backbone=str(files["alex"]), weights=str(tmp_path / "neg.pth"))


def test_lpips_head_files_with_two_weights_for_one_head_are_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    # lin0.model.0.weight and lin0.model.1.weight both became head 0: the later one was used, silently
    head = torch.load(files["alex_head"], weights_only=True)
    head["lin0.model.0.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save(head, tmp_path / "twice.pth")
    with pytest.raises(WeightsError, match=r"holds two weights of head 0\.weight: lin0\.model\.1\.weight and "
                                           r"lin0\.model\.0\.weight"):
        get_metric("lpips-alex", backbone=str(files["alex"]), weights=str(tmp_path / "twice.pth"))


@pytest.mark.parametrize(("alpha", "beta", "message"), [
    (0.1, -0.1, r"beta has negative values \(min -0\.1\); DISTS's weights are non-negative"),
    (0.0, 0.0, r"alpha and beta are all 0; DISTS divides them by their sum"),
])
def test_dists_weights_that_gave_negative_or_nan_distances_are_refused(
    tmp_path: Path, files: dict[str, Path], alpha: float, beta: float, message: str
) -> None:
    torch.save({"alpha": torch.full((1, 1475, 1, 1), alpha), "beta": torch.full((1, 1475, 1, 1), beta)},
               tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=rf"dists: weights file .*w\.pt: {message}"):
        get_metric("dists", backbone=str(files["vgg"]), weights=str(tmp_path / "w.pt"))


def test_a_checkpoint_with_more_than_tensors_is_refused_naming_the_entry(tmp_path: Path) -> None:
    # the message said "is not a state dict (a mapping of names to tensors), got dict" of a dict
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(WeightsError, match=r"its entry 'epoch' is of type int, not a tensor; save the weights alone "
                                           r"\(torch\.save\(checkpoint\['state_dict'\], path\)\)$"):
        load_weights(path, what="a head", metric="demo", option="weights")


def test_an_empty_weight_file_is_said_to_be_empty(tmp_path: Path) -> None:
    # the reason after "torch.load(weights_only=True)): " was empty (a bare EOFError)
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"\(torch\.load\(weights_only=True\)\): EOFError \(the file is empty or "
                                           r"cut short\)$"):
        load_weights(path, what="a head", metric="demo", option="weights")


# ------------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(("name", "other"), [("patch-mmd", "rff"), ("patch-mmd-rff", "exact")])
def test_the_patch_mmd_metrics_refuse_the_other_estimator(name: str, other: str) -> None:
    # estimator= silently turned one metric into the other under its name (in reports, caches, journals)
    with pytest.raises(TypeError, match=rf"^{name} is the '\w+' estimator; use the 'patch-mmd(-rff)?' metric"):
        get_metric(name, estimator=other)
    x, y = _pair()
    own = "exact" if name == "patch-mmd" else "rff"
    torch.testing.assert_close(get_metric(name, estimator=own)(x, y), get_metric(name)(x, y), rtol=0, atol=0)


@pytest.mark.parametrize("option", ["num_features", "features", "seed"])
def test_the_exact_patch_mmd_refuses_the_random_features_options(option: str) -> None:
    # they were accepted and did nothing
    with pytest.raises(TypeError, match=rf"unknown option\(s\) \['{option}'\] for patch-mmd; valid options are"):
        get_metric("patch-mmd", **{option: 8})


# --------------------------------------------------------------------------------------------------------- PSNR


@pytest.mark.parametrize("max_db", [100.0, 4000.0, 1e6])
def test_psnr_of_identical_images_is_its_cap_with_a_finite_gradient(max_db: float) -> None:
    # for caps above ~3200 dB the MSE floor range² · 10^(−max_db / 10) underflowed to 0: inf and a NaN gradient
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    value = psnr(x, x.detach(), max_db=max_db)
    value.sum().backward()
    assert value.tolist() == [max_db, max_db]
    assert x.grad is not None and torch.isfinite(x.grad).all()
    y = (x.detach() + 0.01).clamp(0, 1)
    mse = (x.detach() - y).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(x, y, max_db=max_db), -10 * torch.log10(mse), rtol=1e-12, atol=0)



def test_psnr_of_nan_is_nan_where_the_value_checks_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled graphs skip the value checks: a NaN error must stay NaN, not read as identical images (the cap)."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, 0, 0, 0] = float("nan")
    out = psnr(x, y)
    assert torch.isnan(out[0]) and out[1] == 100.0
