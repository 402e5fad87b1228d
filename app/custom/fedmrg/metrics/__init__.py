"""Report-generation metrics: BLEU-1..4, ROUGE-L, CIDEr, METEOR (with Java) and clinical efficacy.

>>> from fedmrg.metrics import evaluate_reports
>>> result = evaluate_reports({"s1": "Heart normal."}, {"s1": "The heart is normal."}, meteor=False, clinical=False)
>>> round(result["text"]["BLEU_1"], 4)
0.5134
"""

from __future__ import annotations

from fedmrg.metrics.clinical import clinical_efficacy, labels_to_array, positive_matrix
from fedmrg.metrics.evaluate import evaluate_reports
from fedmrg.metrics.meteor import MeteorUnavailable
from fedmrg.metrics.normalize import NORMALIZE_NAMES, normalize_report
from fedmrg.metrics.text import TEXT_METRICS, text_metrics

__all__ = [
    "NORMALIZE_NAMES",
    "TEXT_METRICS",
    "MeteorUnavailable",
    "clinical_efficacy",
    "evaluate_reports",
    "labels_to_array",
    "normalize_report",
    "positive_matrix",
    "text_metrics",
]
