"""Exponential moving average of the trainable parameters (spec §5.7).

Only parameters with requires_grad are tracked; buffers (puzzle table, H_init/L_init) are not, so an EMA copy
carries the live buffers.
"""

import copy
from typing import Dict

import torch
from torch import nn


class EMAHelper:
    def __init__(self, mu: float = 0.999):
        self.mu = mu
        self.shadow: Dict[str, torch.Tensor] = {}

    def register(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            if param.requires_grad:
                self.shadow[name] = param.data.clone()

    def update(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            if param.requires_grad:
                self.shadow[name].data = (1.0 - self.mu) * param.data + self.mu * self.shadow[name].data

    def ema(self, module: nn.Module) -> None:
        """Overwrite `module`'s tracked parameters with the shadow values."""
        for name, param in module.named_parameters():
            if param.requires_grad:
                param.data.copy_(self.shadow[name].data)

    def ema_copy(self, module: nn.Module) -> nn.Module:
        """A deep copy of `module` holding the EMA parameters; `module` itself is left untouched."""
        module_copy = copy.deepcopy(module)
        self.ema(module_copy)
        return module_copy

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        self.shadow = state_dict
