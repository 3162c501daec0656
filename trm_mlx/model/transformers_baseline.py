"""The Transformer baseline: one differentiable pass of H_layers attention blocks per ACT step (spec §3.4)."""

from .config import TRMConfig
from .execution import Execution
from .recursive import ACTModel, RecursiveInner


class BaselineInner(RecursiveInner):
    state_inits = {"z_H": "H_init"}
    mlp_t_len = 0  # the original baseline has no mlp_t option: its blocks always attend

    def build_levels(self) -> None:
        c = self.config
        if c.pos_encodings not in ("rope", "learned"):
            raise ValueError(f"the Transformer baseline needs pos_encodings rope or learned, got {c.pos_encodings!r}")
        self.H_level = self.level(c.H_layers)

    def recur(self, carry, x, rotary):
        z_H = self.H_level(carry["z_H"], x, rotary)
        return {"z_H": z_H}, z_H


class TransformerBaseline(ACTModel):
    name = "recursive_reasoning.transformers_baseline@Model_ACTV2"

    def __init__(self, config: TRMConfig, execution: Execution = Execution()):
        super().__init__(config, BaselineInner(config, self.prefix_len(config), execution))

    def adaptive_halting(self) -> bool:
        c = self.config
        wanted = c.act_enabled if self.training else c.act_inference
        return c.halt_max_steps > 1 and wanted

    def halt_by_q(self, q_halt, q_continue):
        return q_halt > q_continue

    def computes_target_q(self) -> bool:
        return False  # the original's loss head never asks for it: row 1 of q_head sees only weight decay
