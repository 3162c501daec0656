"""The recursive-reasoning models in MLX, selected by the original's class locators (`arch.name`)."""

from .config import TRMConfig
from .losses import ACTLossHead
from .recursive import ACTModel
from .trm import TRM

ARCHITECTURES = {cls.name: cls for cls in (TRM,)}


DEFAULT_ARCH = TRM.name


def architecture(arch: dict):
    """The model class and its config for an arch config dict (`name` + spec §1.4 fields; others ignored)."""
    name = arch.get("name", DEFAULT_ARCH)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name], TRMConfig(**{k: v for k, v in arch.items() if k not in ("name", "loss")})


def create_model(arch: dict) -> ACTModel:
    model_class, config = architecture(arch)
    return model_class(config)


__all__ = ["ACTLossHead", "ACTModel", "ARCHITECTURES", "DEFAULT_ARCH", "TRM", "TRMConfig", "architecture", "create_model"]
