"""Every distance by name: the registry (:mod:`.registry`) and the modules that register into it — the
package's own distances (:mod:`.builtin`), the theory's networks (:mod:`.theory`), the classic scores
(:mod:`.classic`: PSNR, SSIM, MS-SSIM) and the deep baselines (:mod:`.lpips`, :mod:`.dists`), on one set of
trunks (:mod:`.trunks`) and one weight-file reader (:mod:`.weights`); :mod:`.baselines` gathers the baselines'
names. The built-in modules load on the first lookup, so importing this package is light.
"""

from .registry import MetricSpec, get_metric, get_spec, metric_names, metric_specs, register

__all__ = ["MetricSpec", "get_metric", "get_spec", "metric_names", "metric_specs", "register"]
