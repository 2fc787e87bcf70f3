"""TAGS model library: 3D tumor-adaptive guidance for SAM (re-implementation).

Importable without the MONAI Deploy SDK. Entry points: :func:`tags.network.build_tags`,
:class:`tags.inference.TagsPredictor`, :mod:`tags.model_folder`.
"""

__version__ = "0.1.0"
