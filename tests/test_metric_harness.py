"""One parametrised suite over every registered metric x dtype x device (see ``tests/harness.py``).

Checks: shape ``(N,)`` and finiteness, the best value at ``x == y``, symmetry, batch independence, module ==
functional with every reduction, finite gradients (vanishing at ``x == y``), float64 gradcheck, 16-bit
inputs, the spatial map's mean, ``torch.compile`` (core metrics) and CUDA == CPU. Exceptions are declared
in ``harness.EXCEPTIONS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import CASES, CHECKS, EXCEPTIONS, EXCLUDED, MetricTester, exception, write_weight_files
from patchmmd.metrics.registry import metric_names

CUDA = pytest.param(
    "cuda", id="cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)
DEVICES = [pytest.param("cpu", id="cpu"), CUDA]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
HALF_DTYPES = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]


def metrics_for(check: str) -> list[Any]:
    """Every case, with the declared exceptions of ``check`` as visible skips."""
    params = []
    for name in CASES:
        reason = exception(name, check)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if check == "compile" and CASES[name].compile == "slow":
            marks.append(pytest.mark.slow)
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(autouse=True)
def full_float32_on_gpus(request: pytest.FixtureRequest) -> Iterator[None]:
    """On NVIDIA GPUs since Ampere, PyTorch lets cuDNN run float32 convolutions in TF32 (10-bit mantissas) by
    default, and the deep trunks' float32 values then move by about 1e-4 between batch sizes and against the
    CPU (measured on an H200: the vgg trunk distance's batch and one image alone 2.3e-5 apart, random-vgg's GPU and CPU
    values 1.05e-4), beyond float32 rounding. These checks are of the metrics' code, so on a GPU they run in
    full float32; what TF32 changes in the package's own distances (nothing, under PyTorch's defaults) is
    measured by ``benchmarks/tf32_emulation.py --device cuda`` (docs/performance.md, "GPU")."""
    params = getattr(request.node, "callspec", None)
    if params is None or params.params.get("device", "cpu") == "cpu":
        yield
        return
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_weight_files(tmp_path_factory.mktemp("harness-weights"))


@pytest.fixture
def tester(name: str, device: str, weights: dict[str, Path]) -> MetricTester:
    return MetricTester(CASES[name], device, weights)


# ------------------------------------------------------------------------------------------- coverage
def test_harness_covers_every_registered_metric() -> None:
    registered = set(metric_names())
    assert not set(CASES) & set(EXCLUDED), "a metric is both a case and excluded"
    assert set(CASES) | set(EXCLUDED) == registered, (
        f"not covered: {sorted(registered - set(CASES) - set(EXCLUDED))}; "
        f"unknown: {sorted((set(CASES) | set(EXCLUDED)) - registered)}"
    )
    assert all(reason for reason in EXCLUDED.values())


def test_exceptions_name_known_metrics_and_checks() -> None:
    for (name, check), reason in EXCEPTIONS.items():
        assert name in CASES and check in CHECKS and reason, (name, check)
    # a metric without a module form declares it; one with a module form must not skip the check
    for name, case in CASES.items():
        assert (case.module is None) == ((name, "module") in EXCEPTIONS), name


def test_cases_agree_with_the_registry() -> None:
    from patchmmd.metrics.registry import get_spec

    for name, case in CASES.items():
        spec = get_spec(name)
        assert spec.higher_is_better == (case.best != 0.0), name
        if not spec.differentiable:  # a non-differentiable metric must declare both gradient checks
            assert (name, "gradients") in EXCEPTIONS and (name, "gradcheck") in EXCEPTIONS, name


# --------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("shape"))
def test_shape_dtype_finite(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_shape(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("identity"))
def test_identity_is_the_best_value(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_identity(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("symmetry"))
def test_symmetric(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_symmetry(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("batch"))
def test_batch_independence(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_batch(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("module"))
def test_module_equals_functional(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_module(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("gradients"))
def test_gradients_finite(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_gradients(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", metrics_for("gradcheck"))
def test_gradcheck_float64(tester: MetricTester) -> None:
    tester.check_gradcheck()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("map"))
def test_distance_map_averages_to_the_value(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_map(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("name", metrics_for("half"))
def test_half_precision(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_half(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", metrics_for("compile"))
def test_compile_equals_eager(tester: MetricTester) -> None:
    tester.check_compile(torch.float32)


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", metrics_for("device"))
def test_device_matches_cpu(tester: MetricTester, dtype: torch.dtype) -> None:
    tester.check_device(dtype)
