"""Custom MONAI Deploy operators: small adapters from SDK ports to plain library calls.

The operators are imported on first use (PEP 562), so the SDK-free modules of this package
(:mod:`operators.types`, the plain writers) can be imported without loading the SDK.
"""

from importlib import import_module

from .types import CTSeries, OrganMasks, Segmentation, SkippedFile, StageTimings, TargetOutcome

_OPERATORS = {
    "CTPreprocessOperator": "ct_preprocess_operator",
    "CTSeriesSelectorOperator": "ct_series_selector",
    "InferenceSettings": "model_loader",
    "LesionReportOperator": "lesion_report_operator",
    "OrganPromptOperator": "organ_prompt_operator",
    "SegWriterOperator": "seg_writer_operator",
    "StudyLoaderOperator": "study_loader",
    "TagsInferenceOperator": "tags_inference_operator",
}


def __getattr__(name: str):
    if name in _OPERATORS:
        return getattr(import_module(f".{_OPERATORS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CTPreprocessOperator", "CTSeries", "CTSeriesSelectorOperator", "InferenceSettings", "LesionReportOperator",
    "OrganMasks", "OrganPromptOperator", "SegWriterOperator", "Segmentation", "SkippedFile", "StageTimings",
    "StudyLoaderOperator", "TagsInferenceOperator", "TargetOutcome",
]
