"""The recursive-reasoning models in MLX, selected by the original's class locators (`arch.name`)."""

from .config import TRMConfig
from .losses import ACTLossHead
from .recursive import ACTModel
from .hrm import HRM
from .transformers_baseline import TransformerBaseline
from .trm import TRM
from .trm_hier6 import TRMHier6
from .trm_singlez import TRMSingleZ

ARCHITECTURES = {cls.name: cls for cls in (TRM, TRMSingleZ, TRMHier6, HRM, TransformerBaseline)}
# Short names, as the arch config files are named (`arch=hrm`).
ARCH_FILES = {"trm": TRM, "trm_singlez": TRMSingleZ, "trm_hier6": TRMHier6, "hrm": HRM, "transformers_baseline": TransformerBaseline}


DEFAULT_ARCH = TRM.name


def architecture(arch: dict):
    """The model class and its config for an arch config dict (`name` + spec §1.4 fields; others ignored)."""
    name = arch.get("name", DEFAULT_ARCH)
    if name in ARCH_FILES:
        name = ARCH_FILES[name].name
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name], TRMConfig(**{k: v for k, v in arch.items() if k not in ("name", "loss")})


def create_model(arch: dict) -> ACTModel:
    model_class, config = architecture(arch)
    return model_class(config)


__all__ = [
    "ACTLossHead",
    "ACTModel",
    "ARCHITECTURES",
    "ARCH_FILES",
    "DEFAULT_ARCH",
    "HRM",
    "TRM",
    "TRMConfig",
    "TRMHier6",
    "TRMSingleZ",
    "TransformerBaseline",
    "architecture",
    "create_model",
]
