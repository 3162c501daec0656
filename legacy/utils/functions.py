"""Resolve the original's "<module path>@<ClassName>" locator strings (spec §1.1) inside the legacy package."""

import importlib
import inspect
from types import ModuleType
from typing import Tuple


def _split_identifier(identifier: str) -> Tuple[str, str]:
    module_path, sep, class_name = identifier.partition("@")
    if not sep or not module_path or not class_name or "@" in class_name:
        raise ValueError(f"class locator {identifier!r} must look like '<module path>@<ClassName>'")
    return module_path, class_name


def _import(prefix: str, module_path: str, identifier: str) -> ModuleType:
    try:
        return importlib.import_module(prefix + module_path)
    except ModuleNotFoundError as e:
        raise ValueError(f"class locator {identifier!r}: cannot import module {prefix + module_path!r} ({e})") from e


def load_model_class(identifier: str, prefix: str = "legacy.models."):
    """`"recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"` -> the class (prefix replaces the original's `models.`)."""
    module_path, class_name = _split_identifier(identifier)
    module = _import(prefix, module_path, identifier)
    try:
        return getattr(module, class_name)
    except AttributeError as e:
        raise ValueError(f"class locator {identifier!r}: module {module.__name__!r} has no {class_name!r}") from e


def get_model_source_path(identifier: str, prefix: str = "legacy.models.") -> str:
    """Source file of the locator's module (the trainer copies it next to the checkpoints)."""
    module_path, _ = _split_identifier(identifier)
    return inspect.getsourcefile(_import(prefix, module_path, identifier))
