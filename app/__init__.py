"""The MONAI Deploy application (graph only; the operators live in operators/)."""

from .app import TagsSegApp, main, run

__all__ = ["TagsSegApp", "main", "run"]
