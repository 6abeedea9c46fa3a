"""Analysis: task-alignment statistics, the validator that collects them, and report tables and plots.

``alignment`` (statistics on predictions, no ultralytics model needed), ``validator`` (runs ultralytics'
DetectionValidator and feeds the statistics), ``report`` (tables and plots, shared with the ``yolo-tood`` commands).
The names below are re-exported, and again by ``yolo_tood.diagnostics`` (their module before the layer folders, the
tools' own shim).
"""

from .alignment import (
    AlignmentAccumulator,
    AlignmentResult,
    NMSRecord,
    NMSSettings,
    alignment_stats,
    budget_threshold,
    nms_record,
    object_alignment,
    rank_correlation,
    scores_from_conf_cls,
)
from .report import alignment_table
from .validator import AlignmentValidator, evaluate_alignment

__all__ = (
    "AlignmentAccumulator",
    "AlignmentResult",
    "AlignmentValidator",
    "NMSRecord",
    "NMSSettings",
    "alignment_stats",
    "alignment_table",
    "budget_threshold",
    "evaluate_alignment",
    "nms_record",
    "object_alignment",
    "rank_correlation",
    "scores_from_conf_cls",
)
