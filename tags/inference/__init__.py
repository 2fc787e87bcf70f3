"""Inference: the predictor (ROI pipeline), window planning, the window model, and the network
rewritten for inference.

    from tags.inference import TagsPredictor
    predictor = TagsPredictor.from_model_folder("models/liver-demo")
"""

from .predictor import TagsPredictor, TargetResult, WindowRun
from .window_model import TagsWindowModel, WindowModel
from .windows import WindowPolicy

__all__ = ["TagsPredictor", "TargetResult", "WindowRun", "TagsWindowModel", "WindowModel", "WindowPolicy"]
