"""DeiT, ViT and Swin image classifiers with early exits (LGViT and its baselines).

Importing this package registers the classes with transformers' Auto classes, so
`AutoModelForImageClassification.from_pretrained(directory)` loads a saved model.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_highway_deit import DeiTHighwayConfig
from .modeling_highway_deit import DeiTHighwayForImageClassification
from .outputs import HighwayClassifierOutput

AutoConfig.register(DeiTHighwayConfig.model_type, DeiTHighwayConfig, exist_ok=True)
AutoModelForImageClassification.register(DeiTHighwayConfig, DeiTHighwayForImageClassification, exist_ok=True)

__all__ = ["DeiTHighwayConfig", "DeiTHighwayForImageClassification", "HighwayClassifierOutput"]
