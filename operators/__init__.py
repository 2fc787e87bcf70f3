"""Custom MONAI Deploy operators: small adapters from SDK ports to plain library calls."""

from .ct_preprocess_operator import CTPreprocessOperator, CTSeries
from .ct_series_selector import CTSeriesSelectorOperator
from .lesion_report_operator import LesionReportOperator
from .model_loader import InferenceSettings
from .organ_prompt_operator import OrganMasks, OrganPromptOperator
from .seg_writer_operator import SegWriterOperator
from .study_loader import StudyLoaderOperator
from .tags_inference_operator import Segmentation, TagsInferenceOperator, TargetOutcome

__all__ = [
    "CTPreprocessOperator", "CTSeries", "CTSeriesSelectorOperator", "InferenceSettings", "LesionReportOperator", "OrganMasks", "OrganPromptOperator", "SegWriterOperator",
    "Segmentation", "StudyLoaderOperator", "TagsInferenceOperator", "TargetOutcome",
]
