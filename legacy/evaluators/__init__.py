from legacy.evaluators.arc import ARC

__all__ = ["ARC"]
