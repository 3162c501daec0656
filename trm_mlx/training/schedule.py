"""The original learning-rate schedule: linear warmup, then cosine decay to ``min_ratio`` of the base rate."""

import math


def warmup_cosine_lr(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (counted from 1: the first update uses ``step=1``).

    Evaluated on the host in double precision, like the original, so both optimizers of a step get exactly the
    rates the PyTorch trainer would. With ``min_ratio=1`` (the yaml default) the rate is constant after warmup.
    """
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))
