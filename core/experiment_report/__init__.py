"""Statistics over seeds and the self-contained HTML report of an experiment job.

* :func:`summarize` (:mod:`~core.experiment_report.statistics`): per arm and metric the mean, the sample
  standard deviation and the Student-t 95 % interval of the mean over seeds; for each non-reference arm the
  paired difference to the reference over the seeds both arms have, with its paired-t interval.
* :func:`render_html` (:mod:`~core.experiment_report.page`): one HTML page with everything inline (CSS,
  figures as base64 PNG data URIs drawn with matplotlib's Agg canvas by
  :mod:`~core.experiment_report.figures`), readable in a browser with no network and no JavaScript.

Torch-free and free of the service's seams (settings, storage, jobs): the experiment step collects the runs
and writes the page wherever it likes.
"""

from core.experiment_report.figures import curve_keys, robust_plot, training_curves
from core.experiment_report.page import render_html
from core.experiment_report.statistics import (
    DEFAULT_METRICS,
    INTERVAL,
    METRIC_LABELS,
    ROBUST_METRIC,
    summarize,
)

__all__ = [
    "DEFAULT_METRICS",
    "INTERVAL",
    "METRIC_LABELS",
    "ROBUST_METRIC",
    "curve_keys",
    "render_html",
    "robust_plot",
    "summarize",
    "training_curves",
]
