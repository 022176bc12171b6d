"""Measuring retrieval quality: labelled sets (mAP, P@1, recall@k) and copy detection (edited
copies of photos found among distractors), with the pipeline steps from the literature."""

from ..edits import EDITS, HEAVY, STANDARD, Ranges, apply_edit
from .datasets import (
    CopyDetectionSet,
    LabelledSet,
    Query,
    build_copydetect,
    load_copydetect,
    read_labelled,
    write_copydetect,
)
from .metrics import QueryScores, Summary, score_queries
from .runner import (
    CopyDetectionReport,
    Embedded,
    LabelledReport,
    Pipeline,
    Timing,
    copydetect_report,
    copydetect_scores,
    embed_files,
    evaluate_copydetect,
    evaluate_labelled,
    learn_projection,
    load_embedder,
    score_copydetect,
    score_labelled,
)

__all__ = [
    "EDITS",
    "HEAVY",
    "STANDARD",
    "CopyDetectionReport",
    "CopyDetectionSet",
    "Embedded",
    "LabelledReport",
    "LabelledSet",
    "Pipeline",
    "Query",
    "QueryScores",
    "Ranges",
    "Summary",
    "Timing",
    "apply_edit",
    "build_copydetect",
    "copydetect_report",
    "copydetect_scores",
    "embed_files",
    "evaluate_copydetect",
    "evaluate_labelled",
    "learn_projection",
    "load_copydetect",
    "load_embedder",
    "read_labelled",
    "score_copydetect",
    "score_labelled",
    "score_queries",
    "write_copydetect",
]
