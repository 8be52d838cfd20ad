"""Every distance by name: the registry (:mod:`.registry`) and the modules that register into it — the
package's own distances (:mod:`.builtin`), the theory's networks (:mod:`.theory`) and the classic and deep
baselines (:mod:`.baselines`). The built-in modules load on the first lookup, so importing this package is light.
"""

from .registry import MetricSpec, get_metric, get_spec, metric_names, metric_specs, register

__all__ = ["MetricSpec", "get_metric", "get_spec", "metric_names", "metric_specs", "register"]
