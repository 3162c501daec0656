"""TRM with six low-level slots: each L update replaces one slot with f(sum of slots, z_H + x) (spec §3.3)."""

import mlx.core as mx

from .layers import undifferentiated
from .recursive import RecursiveInner
from .trm import TRM

NUM_SLOTS = 6
SLOTS = [f"z_L{i}" for i in range(1, NUM_SLOTS + 1)]


class TRMHier6Inner(RecursiveInner):
    state_inits = {"z_H": "H_init", **{slot: f"L{i}_init" for i, slot in enumerate(SLOTS, start=1)}}

    def build_levels(self) -> None:
        c = self.config
        if c.L_cycles > NUM_SLOTS:
            raise ValueError(f"trm_hier6 has {NUM_SLOTS} low-level slots; L_cycles={c.L_cycles} is more")
        self.L_level = self.level(c.L_layers, calls=c.L_cycles + 1)

    def cycle(self, z_H, z_L, x, rotary):
        for l in range(self.config.L_cycles):
            z_L[l] = self.L_level(sum(z_L[1:], z_L[0]), z_H + x, rotary, call=l)
        return self.L_level(z_H, sum(z_L[1:], z_L[0]), rotary, call=self.config.L_cycles), z_L

    def recur(self, carry, x, rotary):
        z_H, z_L = carry["z_H"], [carry[slot] for slot in SLOTS]
        with undifferentiated(self.L_level):
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self.cycle(z_H, z_L, x, rotary)
        z_H, z_L = mx.stop_gradient(z_H), [mx.stop_gradient(z) for z in z_L]
        z_H, z_L = self.cycle(z_H, z_L, x, rotary)
        return {"z_H": z_H, **dict(zip(SLOTS, z_L))}, z_H


class TRMHier6(TRM):
    name = "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1"
    inner_class = TRMHier6Inner
