"""Agreement of metrics with human judgments: datasets, runner, statistics, report.

* :mod:`.datasets`: readers of BAPPS 2AFC/JND folders and MOS/DMOS label files;
* :mod:`.runner`: :func:`run` computes metrics over a dataset (with a per-metric cache) and their statistics,
  leaving out, with ``on_error="skip"``, the items whose files cannot be read;
* :mod:`.stats`: 2AFC agreement, JND mAP, SROCC/KROCC/PLCC with bootstrap intervals (scipy, imported lazily);
* :mod:`.report`: :func:`write` turns a result into report.md, report.json, scores.csv and plots (matplotlib,
  imported lazily), and errors.csv listing the items left out.

``import patchmmd.evaluation`` needs neither scipy, matplotlib nor click.

Example:
    >>> from patchmmd import evaluation
    >>> evaluation.two_afc_score([0.1, 0.5], [0.2, 0.3], [0.25, 0.0])
    0.375
"""

from .datasets import BAPPS2AFC, BAPPS_SUBSETS, BAPPSJND, DatasetError, JNDItem, MOSDataset, MOSItem, TwoAFCItem
from .report import Report, remove_outputs, write
from .runner import CacheMismatchError, EvalMetric, EvaluationError, EvaluationResult, Progress, run, select_items
from .stats import (
    correlations,
    fit_logistic,
    grouped_correlations,
    jnd_map,
    logistic5,
    summarize,
    two_afc_score,
    two_afc_scores,
)

__all__ = [
    "BAPPS2AFC",
    "BAPPSJND",
    "BAPPS_SUBSETS",
    "CacheMismatchError",
    "DatasetError",
    "EvalMetric",
    "EvaluationError",
    "EvaluationResult",
    "JNDItem",
    "MOSDataset",
    "MOSItem",
    "Progress",
    "Report",
    "TwoAFCItem",
    "correlations",
    "fit_logistic",
    "grouped_correlations",
    "jnd_map",
    "logistic5",
    "remove_outputs",
    "run",
    "select_items",
    "summarize",
    "two_afc_score",
    "two_afc_scores",
    "write",
]
