"""Architecture configs: the fields of the original's pydantic configs (spec §1.4) plus the derived sizes."""

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field

# The dtype names the original accepts for `forward_dtype` (names of torch dtypes).
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b


def swiglu_intermediate_size(expansion: float, width: int) -> int:
    """round() is Python's half-to-even, as in the original (spec §2.1)."""
    return find_multiple(round(expansion * width * 2 / 3), 256)


class TRMConfig(BaseModel):
    """Config of the TRM family (trm, trm_singlez, trm_hier6) and, with the fields it uses, HRM.

    `seq_len` may be left unset when it cannot be inferred (an original checkpoint of a RoPE model without its
    dataset): the RoPE tables are then built for the length of each batch.
    """

    model_config = ConfigDict(extra="ignore")

    batch_size: Optional[Annotated[int, Field(ge=1)]] = None
    seq_len: Optional[Annotated[int, Field(ge=1)]] = None
    puzzle_emb_ndim: Annotated[int, Field(ge=0)] = 0
    num_puzzle_identifiers: int
    vocab_size: int

    H_cycles: Annotated[int, Field(ge=1)]
    L_cycles: Annotated[int, Field(ge=1)] = 1
    H_layers: Annotated[int, Field(ge=0)] = 0
    L_layers: Annotated[int, Field(ge=0)] = 0

    hidden_size: Annotated[int, Field(ge=1)]
    expansion: Annotated[float, Field(gt=0)]
    num_heads: Annotated[int, Field(ge=1)]
    pos_encodings: str

    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    halt_max_steps: Annotated[int, Field(ge=1)]
    halt_exploration_prob: Annotated[float, Field(ge=0, le=1)]

    forward_dtype: str = "bfloat16"
    mlp_t: bool = False
    puzzle_emb_len: Annotated[int, Field(ge=0)] = 16
    no_ACT_continue: bool = True

    # Transformer baseline only.
    act_enabled: bool = True
    act_inference: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def puzzle_prefix_len(self) -> int:
        """P: 16 by default for TRM; ceil(Dp / D) when puzzle_emb_len is 0 (spec §2.1)."""
        if self.puzzle_emb_len != 0:
            return self.puzzle_emb_len
        return -(self.puzzle_emb_ndim // -self.hidden_size)

    @property
    def ceil_prefix_len(self) -> int:
        """ceil(Dp / D): the prefix length of HRM and the Transformer baseline."""
        return -(self.puzzle_emb_ndim // -self.hidden_size)

    def check(self, prefix_len: int) -> None:
        if self.forward_dtype not in DTYPE_NAMES:
            raise ValueError(f"forward_dtype must be one of {DTYPE_NAMES}, got {self.forward_dtype!r}")
        if self.puzzle_emb_ndim == 0 and prefix_len != 0:
            raise ValueError(
                "puzzle_emb_ndim=0 needs puzzle_emb_len=0 (the original breaks on this combination: it keeps "
                f"{prefix_len} prefix positions with no puzzle embedding to fill them)"
            )
        if self.puzzle_emb_ndim > prefix_len * self.hidden_size:
            raise ValueError(
                f"puzzle_emb_ndim={self.puzzle_emb_ndim} does not fit in puzzle_emb_len={self.puzzle_emb_len} "
                f"prefix positions of hidden_size={self.hidden_size}"
            )
        if self.mlp_t and self.seq_len is None:
            raise ValueError("mlp_t needs seq_len: its token-mixing weights are sized by the sequence length")
        if self.pos_encodings == "learned" and self.seq_len is None:
            raise ValueError("learned positions need seq_len: the position table is sized by the sequence length")

