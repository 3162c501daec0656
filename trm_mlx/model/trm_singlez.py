"""TRM with a single latent: z_L is both the reasoning state and the answer (spec §3.2)."""

import mlx.core as mx

from .layers import undifferentiated
from .recursive import RecursiveInner
from .trm import TRM


class TRMSingleZInner(RecursiveInner):
    state_inits = {"z_L": "L_init"}

    def build_levels(self) -> None:
        self.L_level = self.level(self.config.L_layers, calls=self.config.L_cycles + 1)

    def cycle(self, z_L, x, rotary):
        for l in range(self.config.L_cycles):
            z_L = self.L_level(z_L, x, rotary, call=l)
        return self.L_level(z_L, None, rotary, call=self.config.L_cycles)

    def recur(self, carry, x, rotary):
        z_L = carry["z_L"]
        with undifferentiated(self.L_level):
            for _ in range(self.config.H_cycles - 1):
                z_L = self.cycle(z_L, x, rotary)
        z_L = self.cycle(mx.stop_gradient(z_L), x, rotary)
        return {"z_L": z_L}, z_L


class TRMSingleZ(TRM):
    name = "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1"
    inner_class = TRMSingleZInner
