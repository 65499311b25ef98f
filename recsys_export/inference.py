"""Moved to :mod:`recsys_export.export.frozen`; this name stays for old imports."""

from recsys_export.export.frozen import (  # noqa: F401
    DenseNetInference,
    MFInference,
    OnnxRecommendEntry,
    RecommendEntry,
    ScoreAllEntry,
    ScoreEntry,
    inference_module,
)
