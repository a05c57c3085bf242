"""Models by name, each carrying its own input normalization."""

from edgeai.models.registry import MODELS, ModelInfo, build_model, model_names

__all__ = ["MODELS", "ModelInfo", "build_model", "model_names"]
