"""HRM: separate high- and low-level modules, and a one-step gradient through their last updates (spec §3.1)."""

import mlx.core as mx

from .config import TRMConfig
from .execution import Execution
from .layers import undifferentiated
from .recursive import ACTModel, RecursiveInner


class HRMInner(RecursiveInner):
    state_inits = {"z_H": "H_init", "z_L": "L_init"}

    def build_levels(self) -> None:
        self.H_level = self.level(self.config.H_layers)
        self.L_level = self.level(self.config.L_layers)

    def recur(self, carry, x, rotary):
        c = self.config
        z_H, z_L = carry["z_H"], carry["z_L"]
        with undifferentiated(self.H_level, self.L_level):
            for h in range(c.H_cycles):
                for l in range(c.L_cycles):
                    if not (h == c.H_cycles - 1 and l == c.L_cycles - 1):
                        z_L = self.L_level(z_L, z_H + x, rotary)
                if h != c.H_cycles - 1:
                    z_H = self.H_level(z_H, z_L, rotary)
        z_H, z_L = mx.stop_gradient(z_H), mx.stop_gradient(z_L)
        z_L = self.L_level(z_L, z_H + x, rotary)
        z_H = self.H_level(z_H, z_L, rotary)
        return {"z_H": z_H, "z_L": z_L}, z_H


class HRM(ACTModel):
    name = "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1"

    def __init__(self, config: TRMConfig, execution: Execution = Execution()):
        super().__init__(config, HRMInner(config, self.prefix_len(config), execution))

    def halt_by_q(self, q_halt, q_continue):
        return q_halt > q_continue

    def computes_target_q(self) -> bool:
        return True
