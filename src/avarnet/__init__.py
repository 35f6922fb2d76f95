"""avarnet: audio-visual anomaly recognition in surveillance video (AVAR-Net)."""

from .config import VAAR_CLASSES, FeatureSpec, ModelConfig, TrainConfig

__version__ = "0.1.0"
__all__ = ["VAAR_CLASSES", "FeatureSpec", "ModelConfig", "TrainConfig", "__version__"]
