"""The recursive-reasoning models in MLX, selected by the original's class locators (`arch.name`)."""

from .config import TRMConfig
from .execution import Execution
from .losses import ACTLossHead
from .recursive import ACTModel, ACTStep
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


def create_model(arch: dict, execution: Execution = Execution()) -> ACTModel:
    """The model of an arch config, running as `execution` says (default: plain MLX; `Runtime.execution`)."""
    model_class, config = architecture(arch)
    return model_class(config, execution)


__all__ = [
    "ACTLossHead",
    "ACTModel",
    "ACTStep",
    "ARCHITECTURES",
    "ARCH_FILES",
    "DEFAULT_ARCH",
    "Execution",
    "HRM",
    "TRM",
    "TRMConfig",
    "TRMHier6",
    "TRMSingleZ",
    "TransformerBaseline",
    "architecture",
    "create_model",
]
