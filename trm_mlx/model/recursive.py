"""What every recursive-reasoning architecture shares: the input embedding, the output heads, the latent-state
carry, and the ACT wrapper that runs one supervision step per call (spec §2.5, §2.6, §2.9, §3)."""

import functools
import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..data.dataset import IGNORE_LABEL_ID
from .config import TRMConfig
from .execution import Execution
from .init import truncated_normal
from .layers import (
    Block, CastedEmbedding, CastedLinear, PuzzleEmbedding, ReasoningModule, RotaryTables, undifferentiated,
)


class RecursiveInner(nn.Module):
    """Embeddings and heads around an architecture-specific recurrence.

    Subclasses set `state_inits` (carry key -> name of its init vector, in state-dict order), build their reasoning
    modules in `build_levels`, and implement `recur(carry, x, rotary) -> (carry, z_out)`.
    """

    state_inits: dict = {}

    def __init__(self, config: TRMConfig, prefix_len: int, execution: Execution):
        super().__init__()
        config.check(prefix_len)
        self.config = config
        self.execution = execution
        self.prefix_len = prefix_len
        self.dtype = getattr(mx, config.forward_dtype)
        D = config.hidden_size
        # Registration order = the original's state-dict order: init vectors, embeddings, heads, levels.
        for name in self.state_inits.values():
            setattr(self, name, mx.zeros((D,), dtype=self.dtype))
        self.embed_tokens = CastedEmbedding(config.vocab_size, D, 1.0 / math.sqrt(D), execution)
        self.lm_head = CastedLinear(D, config.vocab_size, execution)
        self.q_head = CastedLinear(D, 2, execution, bias=True)
        self.q_head.weight = mx.zeros_like(self.q_head.weight)
        self.q_head.bias = mx.full((2,), -5.0)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim)
        if config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.seq_len + prefix_len, D, 1.0 / math.sqrt(D), execution)
        self._rotary = RotaryTables(config.head_dim, config.rope_theta) if config.pos_encodings == "rope" else None
        self.build_levels()
        for name in self.state_inits.values():
            setattr(self, name, truncated_normal((D,), std=1.0, dtype=self.dtype))
        self.freeze(keys=list(self.state_inits.values()), recurse=False)

    @property
    def mlp_t_len(self) -> int:
        """Token-mixing width of the mlp_t variant: S + P (0 when the variant is off)."""
        return self.config.seq_len + self.prefix_len if self.config.mlp_t else 0

    def level(self, num_layers: int, calls: int = 1) -> ReasoningModule:
        """A reasoning module of `num_layers` blocks that a differentiated pass calls `calls` times."""
        c = self.config
        blocks = [Block(c.hidden_size, c.num_heads, c.expansion, c.rms_norm_eps, self.execution, self.mlp_t_len)
                  for _ in range(num_layers)]  # fmt: skip
        return ReasoningModule(blocks, self.execution, calls)

    def empty_carry(self, batch_size: int, seq_len: int) -> dict:
        shape = (batch_size, seq_len + self.prefix_len, self.config.hidden_size)
        return {key: mx.zeros(shape, dtype=self.dtype) for key in self.state_inits}

    def reset_carry(self, reset: mx.array, carry: dict) -> dict:
        flag = reset[:, None, None]
        return {key: mx.where(flag, getattr(self, name), carry[key]) for key, name in self.state_inits.items()}

    def input_embeddings(self, inputs: mx.array, puzzle_rows) -> mx.array:
        D = self.config.hidden_size
        emb = self.embed_tokens(inputs.astype(mx.int32), self.dtype)
        if self.config.puzzle_emb_ndim > 0:
            pe = puzzle_rows.astype(self.dtype)
            pad = self.prefix_len * D - pe.shape[-1]
            if pad > 0:
                pe = mx.pad(pe, [(0, 0), (0, pad)])
            emb = mx.concatenate([pe.reshape(-1, self.prefix_len, D), emb], axis=1)
        if self.config.pos_encodings == "learned":
            emb = 0.707106781 * (emb + self.embed_pos.embedding_weight.astype(self.dtype))
        return math.sqrt(D) * emb

    def __call__(self, carry: dict, inputs: mx.array, puzzle_rows):
        """(next latent carry, logits [B, S, vocab], Q logits [B, 2] in fp32: halt, continue) of one recursion."""
        x = self.input_embeddings(inputs, puzzle_rows)
        rotary = self._rotary(x.shape[1]) if self._rotary is not None else None
        carry, z = self.recur(carry, x, rotary)
        carry = {key: mx.stop_gradient(value) for key, value in carry.items()}
        return carry, self.lm_head(z)[:, self.prefix_len :], self.q_head(z[:, 0]).astype(mx.float32)


@dataclass
class ACTStep:
    """One ACT step of every row: the carry to continue from, and the step's outputs."""

    carry: dict  # the next step's carry (keys as `ACTModel.initial_carry`'s)
    logits: mx.array  # [B, S, vocab]
    q_halt: mx.array  # [B] fp32: the Q head's halt logit
    q_continue: mx.array  # [B] fp32: its continue logit
    target_q_continue: mx.array | None = None  # the Q-learning target of q_continue (training, Q-continue models)

    @functools.cached_property
    def preds(self) -> mx.array:
        """[B, S] int32: the predicted tokens."""
        return mx.argmax(self.logits, axis=-1).astype(mx.int32)


class ACTModel(nn.Module):
    """The ACT wrapper: one call = one supervision step for every row (spec §2.9).

    A step starts from the carry whose halted rows `reset_halted` restarted on the batch's examples; training
    differentiates the rows of the puzzle embedding (`puzzle_rows`) as an input of the call.
    """

    name: str  # the original's class locator (`arch.name`)

    def __init__(self, config: TRMConfig, inner: RecursiveInner):
        super().__init__()
        self.config = config
        self.inner = inner

    @property
    def execution(self) -> Execution:
        return self.inner.execution

    def arch_config(self) -> dict:
        """The arch config that rebuilds this model (stored in native checkpoints)."""
        return {"name": self.name, **self.config.model_dump(exclude_none=True)}

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb if "puzzle_emb" in self.inner else None

    def initial_carry(self, batch: dict) -> dict:
        B, S = batch["inputs"].shape
        return {
            "inner": self.inner.empty_carry(B, S),
            "steps": mx.zeros((B,), dtype=mx.int32),
            "halted": mx.ones((B,), dtype=mx.bool_),
            "current_data": {k: mx.zeros_like(v) for k, v in batch.items()},
        }

    def reset_halted(self, carry: dict, batch: dict) -> dict:
        """The carry with each halted row restarted: its latents at the init vectors, its step count at 0, and the
        batch's example at its index (rows still thinking keep theirs)."""
        halted = carry["halted"]
        data = {
            k: mx.where(halted.reshape((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
            for k, v in carry["current_data"].items()
        }
        inner = self.inner.reset_carry(halted, carry["inner"])
        return {"inner": inner, "steps": mx.where(halted, 0, carry["steps"]), "halted": halted, "current_data": data}

    def puzzle_rows(self, carry: dict) -> mx.array | None:
        """The puzzle-embedding rows of the carry's examples (None without a puzzle embedding)."""
        emb = self.puzzle_emb
        return emb.gather(carry["current_data"]["puzzle_identifiers"]) if emb is not None else None

    @staticmethod
    def prefix_len(config: TRMConfig) -> int:
        """Puzzle-embedding prefix positions: ceil(Dp / D), as HRM and the baseline (TRM overrides it)."""
        return config.ceil_prefix_len

    def adaptive_halting(self) -> bool:
        return self.training and self.config.halt_max_steps > 1

    def halt_by_q(self, q_halt: mx.array, q_continue: mx.array, threshold: float = 0.5) -> mx.array:
        """Whether the Q head says halt: sigmoid(q) > threshold, i.e. q > logit(threshold) (q_halt > 0 at 0.5)."""
        margin = math.log(threshold / (1 - threshold))
        if self.config.no_ACT_continue:
            return q_halt > margin
        return q_halt - q_continue > margin

    def computes_target_q(self) -> bool:
        return not self.config.no_ACT_continue

    def explores(self) -> bool:
        """Whether a step draws exploration numbers (`exploration_draws`): training with adaptive halting."""
        return self.adaptive_halting() and self.training

    def exploration_draws(self, rows: int) -> tuple[mx.array, mx.array]:
        """The exploration numbers of `rows` rows: two draws every step (uniform, then randint), as the original."""
        uniform = mx.random.uniform(shape=(rows,))
        min_steps = mx.random.randint(2, self.config.halt_max_steps + 1, shape=(rows,), dtype=mx.int32)
        return uniform, min_steps

    def __call__(self, carry: dict, puzzle_rows=None, draws=None, halt_threshold: float | None = None) -> ACTStep:
        """One ACT step of every row from `carry` (halted rows already `reset_halted`).

        `puzzle_rows`: `puzzle_rows(carry)`, gathered here when None. `draws`: these rows' `exploration_draws`,
        drawn here when None. `halt_threshold`: in evaluation, a row also halts where the Q head says so
        (`halt_by_q`); None runs every row for halt_max_steps steps (the original).
        """
        cfg = self.config
        data = carry["current_data"]
        if puzzle_rows is None:
            puzzle_rows = self.puzzle_rows(carry)
        latents, logits, q = self.inner(carry["inner"], data["inputs"], puzzle_rows)
        q_halt, q_continue = q[:, 0], q[:, 1]

        steps = carry["steps"] + 1
        is_last = steps >= cfg.halt_max_steps
        halted = is_last
        target = None
        if self.adaptive_halting():
            halted = halted | mx.stop_gradient(self.halt_by_q(q_halt, q_continue))
        elif not self.training and halt_threshold is not None:
            halted = halted | self.halt_by_q(q_halt, q_continue, halt_threshold)
        if self.explores():
            uniform, min_steps = draws if draws is not None else self.exploration_draws(steps.shape[0])
            halted = halted & (steps >= (uniform < cfg.halt_exploration_prob) * min_steps)
            if self.computes_target_q():
                # The intended Q-continue target (HRM semantics); the original TRM crashes here (spec §2.9).
                with undifferentiated(self.inner):
                    _, _, next_q = self.inner(latents, data["inputs"], puzzle_rows)
                target = mx.where(is_last, next_q[:, 0], mx.maximum(next_q[:, 0], next_q[:, 1]))
                target = mx.stop_gradient(mx.sigmoid(target))
        carry = {"inner": latents, "steps": steps, "halted": halted, "current_data": data}
        return ACTStep(carry, logits, q_halt, q_continue, target)

    def _checked_batch(self, batch: dict) -> dict[str, np.ndarray]:
        """``predict``'s arrays, checked against the model: a wrong shape or an id past a table would otherwise fail
        deep inside MLX, or read another row without a word."""
        missing = [key for key in ("inputs", "puzzle_identifiers") if key not in batch]
        if missing:
            raise ValueError(f"predict: the batch lacks {missing}; it needs 'inputs' [rows, seq_len] and "
                             "'puzzle_identifiers' [rows] ('labels' [rows, seq_len] is optional)")
        arrays = {key: np.asarray(batch[key]) for key in ("inputs", "puzzle_identifiers", "labels") if key in batch}
        for key, array in arrays.items():
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"predict: {key} must hold integers, got {array.dtype}")
        rows, config = len(arrays["inputs"]), self.config
        if arrays["inputs"].ndim != 2:
            raise ValueError(f"predict: inputs of shape {list(arrays['inputs'].shape)}, expected [rows, seq_len]")
        expected = {"inputs": (rows, config.seq_len or arrays["inputs"].shape[-1]), "puzzle_identifiers": (rows,)}
        expected["labels"] = expected["inputs"]
        limits = {"inputs": config.vocab_size, "labels": config.vocab_size}
        if config.puzzle_emb_ndim > 0:  # else the identifiers are not read
            limits["puzzle_identifiers"] = config.num_puzzle_identifiers
        for key, array in arrays.items():
            if array.shape != expected[key]:
                length = "" if config.seq_len is None else f", the model's sequence length {config.seq_len}"
                raise ValueError(f"predict: {key} of shape {list(array.shape)}, expected {list(expected[key])} "
                                 f"(rows as in inputs{length})")
            ids = array[array != IGNORE_LABEL_ID] if key == "labels" else array
            if key in limits and ids.size and (ids.min() < 0 or ids.max() >= limits[key]):
                bad = ids.min() if ids.min() < 0 else ids.max()
                raise ValueError(f"predict: {key} holds {bad}, outside the model's [0, {limits[key]})")
        return arrays

    def predict(self, batch: dict, halt: str = "max", halt_threshold: float = 0.5) -> dict:
        """The evaluation ACT loop on a dict of NumPy int arrays; returns NumPy arrays.

        ``halt="max"`` runs every row for ``halt_max_steps`` steps (the original); ``halt="q"`` gives each row the
        outputs of its first step whose Q head says halt (``sigmoid(q_halt) > halt_threshold``), and ``steps`` the
        steps it used.
        """
        if halt not in ("max", "q"):
            raise ValueError(f"halt={halt!r}: expected 'max' or 'q'")
        if not 0 < halt_threshold < 1:
            raise ValueError(f"halt_threshold={halt_threshold}: expected a probability in (0, 1)")
        threshold = halt_threshold if halt == "q" else None
        was_training = self.training
        self.eval()
        try:
            arrays = {k: mx.array(v.astype(np.int32)) for k, v in self._checked_batch(batch).items()}
            if "labels" not in arrays:
                arrays["labels"] = mx.full(arrays["inputs"].shape, IGNORE_LABEL_ID, dtype=mx.int32)
            if getattr(self, "_predict_step", None) is None or self._predict_rule != threshold:
                self._predict_step = mx.compile(self._predict_outputs(threshold), inputs=self.state)
                self._predict_rule = threshold  # one compiled step per halting rule, reused by every later call
            carry = self.initial_carry(arrays)
            if threshold is not None:
                return self._first_halting_outputs(carry, arrays)
            for _ in range(self.config.halt_max_steps):  # a model may halt early (baseline's act_inference)
                carry, outputs = self._predict_step(carry, arrays)
                mx.eval(carry, outputs)
                if bool(carry["halted"].all()):
                    break
            logits = outputs["logits"]
            return {
                "logits": np.array(logits.astype(mx.float32)),
                "q_halt_logits": np.array(outputs["q_halt_logits"]),
                "preds": np.array(mx.argmax(logits, axis=-1).astype(mx.int32)),
                "steps": np.array(carry["steps"]),
            }
        finally:
            self.train(was_training)

    def _predict_outputs(self, halt_threshold: float | None):
        """`predict`'s step: (carry, batch) -> (next carry, {logits, q_halt_logits})."""

        def step(carry: dict, batch: dict):
            result = self(self.reset_halted(carry, batch), halt_threshold=halt_threshold)
            return result.carry, {"logits": result.logits, "q_halt_logits": result.q_halt}

        return step

    def _first_halting_outputs(self, carry: dict, arrays: dict) -> dict:
        """``predict(halt="q")``: each row's outputs at its first halting step (a halted row restarts on the next
        step, as in training; its later outputs are not used), until every row has halted once."""
        answers, done = {}, np.zeros(arrays["inputs"].shape[0], bool)
        for _ in range(self.config.halt_max_steps):
            carry, outputs = self._predict_step(carry, arrays)
            mx.eval(carry, outputs)
            host = {"logits": np.array(outputs["logits"].astype(mx.float32)),
                    "q_halt_logits": np.array(outputs["q_halt_logits"]), "steps": np.array(carry["steps"])}
            first = np.array(carry["halted"]) & ~done
            for key, value in host.items():
                answers.setdefault(key, value.copy())[first] = value[first]
            done |= first
            if done.all():
                break
        answers["preds"] = answers["logits"].argmax(-1).astype(np.int32)
        return answers
