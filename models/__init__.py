"""DeiT, ViT and Swin image classifiers with early exits (LGViT and its baselines).

Importing this package registers the classes with transformers' Auto classes, so
`AutoModelForImageClassification.from_pretrained(directory)` loads a saved model, and also a directory saved by the
original LGViT code: its config keeps the model types "deit" and "swin", and its `architectures` entry (the original
class names) routes it to these classes, which convert it on load.
"""

from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    SwinConfig,
    SwinForImageClassification,
)

from .configuration_highway_deit import DeiTHighwayConfig
from .configuration_highway_swin import SwinHighwayConfig
from .modeling_highway_deit import DeiTHighwayForImageClassification
from .modeling_highway_swin import SwinHighwayForImageClassification
from .outputs import EarlyExitClassifierOutput


def _original_class_names(model_class: type) -> tuple[type, ...]:
    """`model_class` under the names the original code's checkpoints carry in `architectures`: its own, and the
    `_distillation` suffix of the original's stage-2 class, which loads as `model_class` itself."""

    def from_pretrained(cls, *args, **kwargs):
        return model_class.from_pretrained(*args, **kwargs)

    stage2 = type(f"{model_class.__name__}_distillation", (model_class,),
                  {"__doc__": f"Loads the original code's stage-2 checkpoints as `{model_class.__name__}`.",
                   "__module__": __name__, "from_pretrained": classmethod(from_pretrained)})
    return model_class, stage2


AutoConfig.register(DeiTHighwayConfig.model_type, DeiTHighwayConfig, exist_ok=True)
AutoModelForImageClassification.register(DeiTHighwayConfig, DeiTHighwayForImageClassification, exist_ok=True)
AutoConfig.register(SwinHighwayConfig.model_type, SwinHighwayConfig, exist_ok=True)
AutoModelForImageClassification.register(SwinHighwayConfig, SwinHighwayForImageClassification, exist_ok=True)
# transformers picks among these by the checkpoint's `architectures`; its own classes stay the default.
AutoModelForImageClassification.register(
    DeiTConfig, (DeiTForImageClassification, DeiTForImageClassificationWithTeacher,
                 *_original_class_names(DeiTHighwayForImageClassification)), exist_ok=True)
AutoModelForImageClassification.register(
    SwinConfig, (SwinForImageClassification, *_original_class_names(SwinHighwayForImageClassification)),
    exist_ok=True)

__all__ = [
    "DeiTHighwayConfig",
    "DeiTHighwayForImageClassification",
    "EarlyExitClassifierOutput",
    "SwinHighwayConfig",
    "SwinHighwayForImageClassification",
]
