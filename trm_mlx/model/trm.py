"""TRM: one tiny network applied recursively to a latent z_L (L cycles) and an answer state z_H (spec §2.7)."""

import mlx.core as mx

from .config import TRMConfig
from .execution import Execution
from .layers import undifferentiated
from .recursive import ACTModel, RecursiveInner


class TRMInner(RecursiveInner):
    state_inits = {"z_H": "H_init", "z_L": "L_init"}

    def build_levels(self) -> None:
        self.L_level = self.level(self.config.L_layers, calls=self.config.L_cycles + 1)

    def cycle(self, z_H, z_L, x, rotary):
        for l in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + x, rotary, call=l)
        z_H = self.L_level(z_H, z_L, rotary, call=self.config.L_cycles)
        return z_H, z_L

    def recur(self, carry, x, rotary):
        z_H, z_L = carry["z_H"], carry["z_L"]
        # H_cycles - 1 cycles without gradient, then one cycle that is back-propagated through entirely.
        with undifferentiated(self.L_level):
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self.cycle(z_H, z_L, x, rotary)
        z_H, z_L = mx.stop_gradient(z_H), mx.stop_gradient(z_L)
        z_H, z_L = self.cycle(z_H, z_L, x, rotary)
        return {"z_H": z_H, "z_L": z_L}, z_H


class TRM(ACTModel):
    name = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
    inner_class = TRMInner

    def __init__(self, config: TRMConfig, execution: Execution = Execution()):
        super().__init__(config, self.inner_class(config, self.prefix_len(config), execution))

    @staticmethod
    def prefix_len(config: TRMConfig) -> int:
        return config.puzzle_prefix_len
