"""What every recursive-reasoning architecture shares: the input embedding, the output heads, the latent-state
carry, and the ACT wrapper that runs one supervision step per call (spec §2.5, §2.6, §2.9, §3)."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..data.dataset import IGNORE_LABEL_ID
from .config import TRMConfig
from .init import truncated_normal
from .layers import CastedEmbedding, CastedLinear, PuzzleEmbedding, ReasoningModule, RotaryTables, undifferentiated


class RecursiveInner(nn.Module):
    """Embeddings and heads around an architecture-specific recurrence.

    Subclasses set `state_inits` (carry key -> name of its init vector, in state-dict order), build their reasoning
    modules in `build_levels`, and implement `recur(carry, x, rotary) -> (carry, z_out)`.
    """

    state_inits: dict = {}

    def __init__(self, config: TRMConfig, prefix_len: int):
        super().__init__()
        config.check(prefix_len)
        self.config = config
        self.prefix_len = prefix_len
        self.dtype = getattr(mx, config.forward_dtype)
        D = config.hidden_size
        # Registration order = the original's state-dict order: init vectors, embeddings, heads, levels.
        for name in self.state_inits.values():
            setattr(self, name, mx.zeros((D,), dtype=self.dtype))
        self.embed_tokens = CastedEmbedding(config.vocab_size, D, init_std=1.0 / math.sqrt(D))
        self.lm_head = CastedLinear(D, config.vocab_size)
        self.q_head = CastedLinear(D, 2, bias=True)
        self.q_head.weight = mx.zeros_like(self.q_head.weight)
        self.q_head.bias = mx.full((2,), -5.0)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim)
        if config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.seq_len + prefix_len, D, init_std=1.0 / math.sqrt(D))
        self._rotary = RotaryTables(config.head_dim, config.rope_theta) if config.pos_encodings == "rope" else None
        self.build_levels()
        for name in self.state_inits.values():
            setattr(self, name, truncated_normal((D,), std=1.0, dtype=self.dtype))
        self.freeze(keys=list(self.state_inits.values()), recurse=False)

    @property
    def mlp_t_len(self) -> int:
        """Token-mixing width of the mlp_t variant: S + P (0 when the variant is off)."""
        return self.config.seq_len + self.prefix_len if self.config.mlp_t else 0

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

    def __call__(self, carry: dict, data: dict, puzzle_rows):
        for module in self.modules():
            if isinstance(module, ReasoningModule):
                module.begin_pass()
        x = self.input_embeddings(data["inputs"], puzzle_rows)
        rotary = self._rotary(x.shape[1]) if self._rotary is not None else None
        carry, z = self.recur(carry, x, rotary)
        carry = {key: mx.stop_gradient(value) for key, value in carry.items()}
        logits = self.lm_head(z)[:, self.prefix_len :]
        q = self.q_head(z[:, 0]).astype(mx.float32)
        return carry, logits, (q[:, 0], q[:, 1])


class ACTModel(nn.Module):
    """The ACT wrapper: one call = one supervision step for every row (spec §2.9).

    A step is split in three so training can differentiate the gathered puzzle-embedding rows on their own:
    `begin_step` (reset halted rows, take their new examples), `gather_puzzle_rows`, and `step`.
    """

    name: str  # the original's class locator (`arch.name`)

    def __init__(self, config: TRMConfig, inner: RecursiveInner):
        super().__init__()
        self.config = config
        self.inner = inner
        # Which slice of the global batch this process trains (data parallelism, see `shard_batch`).
        self.shard_index = 0
        self.shard_count = 1
        # Evaluation: None runs every row for halt_max_steps (the original); a probability p halts a row at the
        # first step where sigmoid(q_halt) > p (sigmoid(q_halt - q_continue) with the Q-continue head).
        self.inference_halt: float | None = None

    def shard_batch(self, index: int, count: int) -> None:
        """Train as rank ``index`` of ``count`` data-parallel ranks, on rows ``[index·B, (index+1)·B)`` of each
        global batch, so that ACT exploration takes those rows' draws of the global batch."""
        self.shard_index, self.shard_count = index, count

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

    def begin_step(self, carry: dict, batch: dict):
        halted = carry["halted"]
        inner = self.inner.reset_carry(halted, carry["inner"])
        steps = mx.where(halted, 0, carry["steps"])
        data = {
            k: mx.where(halted.reshape((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
            for k, v in carry["current_data"].items()
        }
        return {"inner": inner, "steps": steps, "halted": halted, "current_data": data}, data

    def gather_puzzle_rows(self, data: dict):
        emb = self.puzzle_emb
        return emb.gather(data["puzzle_identifiers"]) if emb is not None else None

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

    def draws_exploration(self) -> bool:
        return self.adaptive_halting() and self.training

    def step(self, carry: dict, data: dict, puzzle_rows, draws=None):
        """One ACT step; `draws` are the exploration numbers of these rows when drawn elsewhere (CPU lanes),
        else `exploration_draws` draws them."""
        cfg = self.config
        inner, logits, (q_halt, q_continue) = self.inner(carry["inner"], data, puzzle_rows)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        steps = carry["steps"] + 1
        is_last = steps >= cfg.halt_max_steps
        halted = is_last
        if self.adaptive_halting():
            halted = halted | mx.stop_gradient(self.halt_by_q(q_halt, q_continue))
        elif not self.training and self.inference_halt is not None:
            halted = halted | self.halt_by_q(q_halt, q_continue, self.inference_halt)
        if self.draws_exploration():
            uniform, min_steps = draws if draws is not None else self.exploration_draws(steps.shape[0])
            halted = halted & (steps >= (uniform < cfg.halt_exploration_prob) * min_steps)
            if self.computes_target_q():
                # The intended Q-continue target (HRM semantics); the original TRM crashes here (spec §2.9).
                with undifferentiated(self.inner):
                    _, _, (next_halt, next_continue) = self.inner(inner, data, puzzle_rows)
                target = mx.where(is_last, next_halt, mx.maximum(next_halt, next_continue))
                outputs["target_q_continue"] = mx.stop_gradient(mx.sigmoid(target))
        return {"inner": inner, "steps": steps, "halted": halted, "current_data": data}, outputs

    def exploration_draws(self, rows: int) -> tuple[mx.array, mx.array]:
        """This process's rows of the exploration numbers of the global batch: two draws every step (uniform, then
        randint), as the original. Every rank draws the whole global batch's from the same random state and keeps
        its own rows, so N ranks halt the rows one process would."""
        total = rows * self.shard_count
        uniform = mx.random.uniform(shape=(total,))
        min_steps = mx.random.randint(2, self.config.halt_max_steps + 1, shape=(total,), dtype=mx.int32)
        if self.shard_count == 1:
            return uniform, min_steps
        own = slice(self.shard_index * rows, (self.shard_index + 1) * rows)
        return uniform[own], min_steps[own]

    def __call__(self, carry: dict, batch: dict):
        carry, data = self.begin_step(carry, batch)
        return self.step(carry, data, self.gather_puzzle_rows(data))

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
        self.inference_halt = threshold
        try:
            arrays = {k: mx.array(np.asarray(batch[k]).astype(np.int32)) for k in ("inputs", "puzzle_identifiers")}
            labels = batch.get("labels")
            arrays["labels"] = (
                mx.array(np.asarray(labels).astype(np.int32))
                if labels is not None
                else mx.full(arrays["inputs"].shape, IGNORE_LABEL_ID, dtype=mx.int32)
            )
            if getattr(self, "_predict_step", None) is None or self._predict_rule != threshold:
                # traced once per halting rule (read while tracing), reused by every later call
                self._predict_step = mx.compile(self.__call__, inputs=self.state)
                self._predict_rule = threshold
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
            self.inference_halt = None
            self.train(was_training)

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
