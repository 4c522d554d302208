"""DeiT, ViT and Swin image classifiers with early exits (LGViT and its baselines).

Importing this package registers the classes with transformers' Auto classes, so
`AutoModelForImageClassification.from_pretrained(directory)` loads a saved model.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_highway_deit import DeiTHighwayConfig
from .configuration_highway_swin import SwinHighwayConfig
from .modeling_highway_deit import DeiTHighwayForImageClassification
from .modeling_highway_swin import SwinHighwayForImageClassification
from .outputs import HighwayClassifierOutput

AutoConfig.register(DeiTHighwayConfig.model_type, DeiTHighwayConfig, exist_ok=True)
AutoModelForImageClassification.register(DeiTHighwayConfig, DeiTHighwayForImageClassification, exist_ok=True)
AutoConfig.register(SwinHighwayConfig.model_type, SwinHighwayConfig, exist_ok=True)
AutoModelForImageClassification.register(SwinHighwayConfig, SwinHighwayForImageClassification, exist_ok=True)

__all__ = [
    "DeiTHighwayConfig",
    "DeiTHighwayForImageClassification",
    "HighwayClassifierOutput",
    "SwinHighwayConfig",
    "SwinHighwayForImageClassification",
]
