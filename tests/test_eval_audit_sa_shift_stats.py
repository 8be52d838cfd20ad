"""The shift check's pairs and ratio, and the 2AFC / JND statistics, against references written here from the
definitions (docs/evaluation.md, the BAPPS/LPIPS protocols): independent of the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from patchmmd.data import sample_image
from patchmmd.evaluation.shift import NOISE_SIGMA, SHIFTS, ratios, shift_distances, shift_pairs, shift_ratios
from patchmmd.evaluation.stats import jnd_map, orient, two_afc_score, two_afc_scores, voc_ap


# ---------------------------------------------------------------------------------------------- shift
def _keys(t: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


@pytest.mark.parametrize("h, w", [(12, 12), (17, 23), (30, 19)])
def test_shift_pairs_are_what_the_docs_say(h: int, w: int) -> None:
    x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h * w), dtype=torch.float64)
    a = x.numpy()
    p = shift_pairs(x, seed=5)
    ref = a[:, 2 : h - 2, 2 : w - 2]
    for kind in (*SHIFTS, "noise", "blur"):
        assert np.array_equal(p[kind][0].numpy(), ref), kind
        assert p[kind][1].shape == (3, h - 4, w - 4)
    # the window moved right by 1 (so the content moves left), right and down by 1, right by 2
    assert np.array_equal(p["shift-1px"][1].numpy(), a[:, 2 : h - 2, 3 : w - 1])
    assert np.array_equal(p["shift-1px-diag"][1].numpy(), a[:, 3 : h - 1, 3 : w - 1])
    assert np.array_equal(p["shift-2px"][1].numpy(), a[:, 2 : h - 2, 4:w])
    # half a pixel right: Keys' kernel (a = -0.5) at the distances of the columns -1, 0, 1, 2 from +0.5
    weights = {dx: _keys(dx - 0.5) for dx in (-1, 0, 1, 2)}
    assert weights == {-1: -1 / 16, 0: 9 / 16, 1: 9 / 16, 2: -1 / 16}
    half = sum(wt * a[:, 2 : h - 2, 2 + dx : w - 2 + dx] for dx, wt in weights.items())
    assert np.allclose(p["shift-0.5px"][1].numpy(), np.clip(half, 0, 1), atol=1e-15)
    # noise: σ 0.03 of the seed's standard normals (drawn on the CPU), clipped to [0, 1]
    z = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    assert np.allclose(p["noise"][1].numpy(), np.clip(ref + NOISE_SIGMA * z, 0, 1), atol=1e-15)
    # blur: the crop under a normalised Gaussian of σ 1, radius 3, mirrored at the crop's edges (torch's reflect)
    t = np.arange(-3, 4)
    k = np.exp(-0.5 * t**2)
    k /= k.sum()
    blur = convolve1d(convolve1d(ref, k, axis=1, mode="mirror"), k, axis=2, mode="mirror")
    assert np.allclose(p["blur"][1].numpy(), blur, atol=1e-12)


def test_the_ratio_divides_by_the_milder_distortion_whichever_it_is() -> None:
    base = {"shift-1px": 0.01, "shift-1px-diag": 0.02, "shift-2px": 0.04, "shift-0.5px": 0.005}
    assert ratios({**base, "noise": 0.1, "blur": 0.2}) == pytest.approx({k: v / 0.1 for k, v in base.items()})
    assert ratios({**base, "noise": 0.3, "blur": 0.05}) == pytest.approx({k: v / 0.05 for k, v in base.items()})
    for mild in (0.0, -0.1):  # no visible distortion to compare with: undefined, not a number
        assert all(math.isnan(v) for v in ratios({**base, "noise": mild, "blur": 0.2}).values())


def _photo() -> torch.Tensor:
    x = sample_image("astronaut")
    top, left = (x.shape[-2] - 64) // 2, (x.shape[-1] - 64) // 2
    return x[:, top : top + 64, left : left + 64].contiguous()


def test_the_shift_check_fails_a_pixelwise_distance_and_passes_a_shift_blind_one() -> None:
    """The check's ratio on a photo: L2 counts a 1 px shift as more than the mildest visible distortion (the check
    must fail it), L2 after the best alignment within 2 px does not count it at all (the check must pass it)."""

    def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.double() - b.double()).pow(2).mean(dim=(1, 2, 3))

    def aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        inner = a[..., 2 : h - 2, 2 : w - 2]
        return torch.stack([l2(inner, b[..., 2 + dy : h - 2 + dy, 2 + dx : w - 2 + dx])
                            for dy in range(-2, 3) for dx in range(-2, 3)]).amin(0)

    x = _photo()
    d = shift_distances(l2, x, seed=0)
    r = shift_ratios(l2, x, seed=0)
    mild = min(d["noise"], d["blur"])
    assert r["shift-1px"] == pytest.approx(d["shift-1px"] / mild, rel=1e-12)
    assert r["shift-1px"] > 0.15 and r["shift-1px-diag"] > 0.15
    blind = shift_ratios(aligned, x, seed=0)
    assert blind["shift-1px"] == 0.0 and blind["shift-1px-diag"] == 0.0 and blind["shift-2px"] == 0.0


def test_the_shift_distances_do_not_depend_on_the_device_draws_or_the_call() -> None:
    x = _photo()

    def mean_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean(dim=(1, 2, 3))

    assert shift_distances(mean_abs, x, seed=7) == shift_distances(mean_abs, x, seed=7)
    torch.manual_seed(123)  # the global generator plays no part
    assert shift_distances(mean_abs, x, seed=7) == shift_distances(mean_abs, x, seed=7)
    assert shift_distances(mean_abs, x, seed=7)["noise"] != shift_distances(mean_abs, x, seed=8)["noise"]


# ----------------------------------------------------------------------------------------------- 2AFC
def _two_afc_reference(d0: list[float], d1: list[float], g: list[float]) -> float:
    """BAPPS: a triplet scores the share of people who agree with the distance's choice; a tie scores 1/2."""
    total = 0.0
    for a, b, h in zip(d0, d1, g, strict=True):
        if a < b:  # the distance picks p0: agreed by the 1 - g who preferred p0
            total += 1 - h
        elif b < a:
            total += h
        else:
            total += 0.5
    return total / len(d0)


def test_two_afc_equals_the_bapps_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        d0 = rng.integers(0, 5, n) / 4.0  # coarse values: many ties
        d1 = rng.integers(0, 5, n) / 4.0
        g = rng.integers(0, 6, n) / 5.0
        assert two_afc_score(d0, d1, g) == pytest.approx(_two_afc_reference(list(d0), list(d1), list(g)), abs=1e-15)
        # p * h + (1 - p) * (1 - h) with p = P(distance picks p1) (1/2 on a tie) and h = g
        p = (d1 < d0) + 0.5 * (d0 == d1)
        assert np.allclose(two_afc_scores(d0, d1, g), p * g + (1 - p) * (1 - g))


def test_two_afc_of_a_similarity_is_scored_as_its_negation() -> None:
    """A similarity (PSNR, SSIM: higher = closer) picks the patch with the *higher* value: negated, it scores as a
    distance would; not negated it scores 1 - the right score (ties aside)."""
    s0, s1, g = np.array([30.0, 20.0, 25.0]), np.array([25.0, 28.0, 25.0]), np.array([0.1, 0.8, 0.3])
    # the similarity picks p0, p1, tie: agreement 0.9, 0.8, 0.5
    assert two_afc_score(orient(s0, higher_is_better=True), orient(s1, higher_is_better=True), g) == pytest.approx(
        (0.9 + 0.8 + 0.5) / 3)
    assert two_afc_score(s0, s1, g) == pytest.approx((0.1 + 0.2 + 0.5) / 3)


# ------------------------------------------------------------------------------------------------ JND
def _lpips_voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """LPIPS's ``voc_ap`` (use_07_metric=False), transcribed loop for loop."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _lpips_jnd(d: np.ndarray, same: np.ndarray) -> float:
    """LPIPS's ``score_jnd_dataset`` on distances (ascending: small predicts "same")."""
    order = np.argsort(d)
    s = same[order]
    tp = np.cumsum(s)
    fp = np.cumsum(1 - s)
    fn = np.sum(s) - tp
    return _lpips_voc_ap(tp / (tp + fn), tp / (tp + fp))


def _one_step_ties(d: np.ndarray, same: np.ndarray) -> float:
    """The documented tie rule, by brute force: the ranking's points are the distinct distances, ascending, each
    with the true and false positives of every pair at or below it."""
    levels = np.unique(d)
    tp = np.array([same[d <= v].sum() for v in levels])
    fp = np.array([(1 - same[d <= v]).sum() for v in levels])
    return _lpips_voc_ap(tp / same.sum(), tp / (tp + fp))


def test_jnd_map_equals_lpips_on_distinct_distances_and_the_tie_rule_on_ties() -> None:
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(1, 30))
        same = rng.random(n) if trial % 2 else rng.integers(0, 2, n).astype(float)
        if same.sum() == 0:
            continue
        d = rng.random(n)
        assert jnd_map(d, same) == pytest.approx(_lpips_jnd(d, same), abs=1e-12)
        coarse = rng.integers(0, 4, n).astype(float)
        assert jnd_map(coarse, same) == pytest.approx(_one_step_ties(coarse, same), abs=1e-12)


def test_jnd_map_of_a_similarity_needs_its_negation() -> None:
    """Sorting is by distance ascending: a similarity is negated first (the runner does), which gives the same mAP
    as the distance that ranks the pairs alike; unnegated it is the reversed ranking."""
    same = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    sim = 40.0 - 10 * d  # PSNR-like: higher = more alike
    assert jnd_map(orient(sim, higher_is_better=True), same) == pytest.approx(jnd_map(d, same))
    # precision 1, 1, 2/3, 3/4 at recall 1/3, 2/3, 2/3, 1: AP = 1/3 + 1/3 + 1/3 · 3/4
    assert jnd_map(d, same) == pytest.approx(2 / 3 + 0.25)
    assert jnd_map(sim, same) == pytest.approx(jnd_map(-d, same))


def test_voc_ap_equals_lpips() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(1, 20))
        rec = np.sort(rng.integers(0, 5, n) / 4.0)
        prec = rng.random(n)
        assert voc_ap(rec, prec) == pytest.approx(_lpips_voc_ap(rec, prec), abs=1e-15)


def test_statistics_refuse_nan_and_empty_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        two_afc_score([0.1, math.nan], [0.2, 0.3], [0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        jnd_map([0.1, math.nan], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        two_afc_score([], [], [])
    with pytest.raises(ValueError, match="empty"):
        jnd_map([], [])
    # integer and boolean input is read as float64 (no integer arithmetic anywhere)
    big = np.array([2**62, 2**62 + 2**12], dtype=np.int64)
    assert two_afc_score(big, big[::-1], [1.0, 0.0]) == 0.0
    assert jnd_map(np.array([3, 1, 2], dtype=np.uint8), np.array([True, True, False])) == pytest.approx(
        _lpips_jnd(np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])))


# ------------------------------------------------------------------------------------- the suite's shift part
def test_the_suites_shift_part_is_the_median_and_max_of_the_per_photo_ratios() -> None:
    """Per photo (centre crop of at most shift_size, noise seeded seed + its index), the ratios of the metric as a
    distance (a similarity ``s`` as ``1 - s``); the check reads the median over photos."""
    from patchmmd.evaluation.suite import SuiteConfig, SuiteMetric, _checks, _shift

    def sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # a similarity in (0, 1]
        return torch.exp(-50 * (a.double() - b.double()).pow(2).mean(dim=(1, 2, 3)))

    g = torch.Generator().manual_seed(4)
    photos = [sample_image("astronaut")[:, :40, :50], torch.rand(3, 30, 30, generator=g),
              torch.rand(3, 20, 26, generator=g)]
    cfg = SuiteConfig.quick_config(seed=11, shift_size=32)
    m = SuiteMetric("sim", "sim", {}, "candidate", higher_is_better=True, fn=sim)
    out = _shift(photos, ["a", "b", "c"], [m], cfg, lambda s: None, None)["metrics"]["sim"]

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1 - sim(a, b)

    per = []
    for i, x in enumerate(photos):
        h, w = x.shape[-2:]
        sh, sw = min(h, 32), min(w, 32)
        crop = x[:, (h - sh) // 2 : (h - sh) // 2 + sh, (w - sw) // 2 : (w - sw) // 2 + sw]
        per.append(shift_ratios(dist, crop, seed=11 + i))
    for k in SHIFTS:
        vals = sorted(r[k] for r in per)
        assert out["median"][k] == pytest.approx(vals[1], rel=1e-5)
        assert out["max"][k] == pytest.approx(vals[2], rel=1e-5)
    data = {"human": {}, "shift": {"metrics": {"sim": out}}, "tasks": {}}
    row = next(r for r in _checks(data, ["sim"], [])["sim"] if r["check"] == "shift")
    assert row["pass"] is (max(out["median"]["shift-1px"], out["median"]["shift-1px-diag"]) <= 0.15)
