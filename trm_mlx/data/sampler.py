"""The original training order (groups -> one puzzle per group -> its examples, packed into global batches),
with every random draw seeded so the same seed gives the same batches on every run, and resumable mid-iteration.

Two random streams, as in the original (§6.3):
* group order and puzzle choice: `Generator(Philox(seed + iters))`, re-created for every set pass (`iters` counts
  set passes over the whole run);
* which examples of a puzzle fill the batch: a legacy `RandomState(seed)` created once and kept for the whole run.
  The original draws these from NumPy's global RNG in the DataLoader worker, seeded by PyTorch from the run's
  torch generator; `np.random.seed(seed)` there reproduces our batches exactly.
"""

import copy
from dataclasses import dataclass, field
from collections.abc import Iterator

import numpy as np


@dataclass
class SetIndex:
    """The index arrays of one set: puzzle p owns rows [puzzle_indices[p], puzzle_indices[p+1]), group g owns
    puzzles [group_indices[g], group_indices[g+1])."""

    puzzle_indices: np.ndarray
    group_indices: np.ndarray


@dataclass
class SampledBatch:
    set_index: int
    example_rows: np.ndarray  # [global_batch_size] rows of inputs/labels
    puzzle_rows: np.ndarray  # [global_batch_size] puzzle index of each row


@dataclass
class SamplerState:
    """Where the training iteration stands; every field is a plain value so it can go into a checkpoint."""

    iters: int = 0  # the original's `_iters`: set passes begun so far
    set_index: int | None = None  # set in progress; None between iterations
    groups_consumed: int = 0  # entries of the current set's group order already packed (0 = set not begun)
    example_rng: dict = field(default_factory=dict)  # legacy RandomState state of the example-choice stream

    def to_dict(self) -> dict:
        return dict(
            iters=self.iters,
            set_index=self.set_index,
            groups_consumed=self.groups_consumed,
            example_rng=copy.deepcopy(self.example_rng),
        )


def _rng_state_to_plain(rng: np.random.RandomState) -> dict:
    state = rng.get_state(legacy=False)
    return dict(
        key=[int(v) for v in state["state"]["key"]],
        pos=int(state["state"]["pos"]),
        has_gauss=int(state["has_gauss"]),
        gauss=float(state["gauss"]),
    )


def _rng_from_plain(state: dict) -> np.random.RandomState:
    rng = np.random.RandomState()
    rng.set_state(
        dict(
            bit_generator="MT19937",
            state=dict(key=np.asarray(state["key"], dtype=np.uint32), pos=int(state["pos"])),
            has_gauss=int(state["has_gauss"]),
            gauss=float(state["gauss"]),
        )
    )
    return rng


class TrainSampler:
    def __init__(self, sets: list[SetIndex], global_batch_size: int, seed: int, epochs_per_iter: int = 1):
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if epochs_per_iter < 1:
            raise ValueError(f"epochs_per_iter must be >= 1, got {epochs_per_iter}")
        self.sets = sets
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.epochs_per_iter = epochs_per_iter

    def initial_state(self) -> SamplerState:
        return SamplerState(example_rng=_rng_state_to_plain(np.random.RandomState(self.seed)))

    def validate_state(self, state: SamplerState) -> None:
        try:
            _rng_from_plain(state.example_rng)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"sampler state: example_rng is not a saved RandomState ({e!r})") from None
        if state.set_index is None:
            return
        if not 0 <= state.set_index < len(self.sets):
            raise ValueError(f"sampler state: set_index {state.set_index} out of range for {len(self.sets)} sets")
        n_order = self.epochs_per_iter * (len(self.sets[state.set_index].group_indices) - 1)
        if not 0 <= state.groups_consumed <= n_order:
            raise ValueError(
                f"sampler state: groups_consumed {state.groups_consumed} out of range for set {state.set_index} "
                f"({n_order} group draws per pass); was it saved with another dataset or epochs_per_iter?"
            )

    def iterate(self, state: SamplerState) -> Iterator[tuple[SampledBatch | None, SamplerState]]:
        """Rest of one iteration from `state`: (batch, state after it) per full batch, then (None, final state).

        The last batch already carries the final state, so a checkpoint taken right after it starts the next
        iteration on resume rather than an empty remainder of this one.
        """
        pending = None
        for batch, after in self._full_batches(state):
            if batch is None:
                if pending is not None:
                    yield pending[0], after
                yield None, after
                return
            if pending is not None:
                yield pending
            pending = (batch, after)

    def _full_batches(self, state: SamplerState) -> Iterator[tuple[SampledBatch | None, SamplerState]]:
        self.validate_state(state)
        example_rng = _rng_from_plain(state.example_rng)
        iters = state.iters
        set_index, groups_consumed = (0, 0) if state.set_index is None else (state.set_index, state.groups_consumed)

        for set_index in range(set_index, len(self.sets)):
            index = self.sets[set_index]
            if groups_consumed == 0:
                iters += 1
            rng = np.random.Generator(np.random.Philox(seed=self.seed + iters))
            n_groups = len(index.group_indices) - 1
            order = np.concatenate([rng.permutation(n_groups) for _ in range(self.epochs_per_iter)])
            for g in order[:groups_consumed]:  # replay the puzzle draws of batches already delivered
                rng.integers(index.group_indices[g], index.group_indices[g + 1])

            pos = groups_consumed
            while pos < len(order):
                pos, rows, puzzles = self._pack(rng, example_rng, order, pos, index)
                if len(rows) < self.global_batch_size:
                    break  # the original drops the last incomplete batch (its draws still happen)
                after = SamplerState(iters, set_index, pos, _rng_state_to_plain(example_rng))
                yield SampledBatch(set_index, rows, puzzles), after
            groups_consumed = 0

        yield None, SamplerState(iters, None, 0, _rng_state_to_plain(example_rng))

    def _pack(self, rng, example_rng, order, pos, index: SetIndex) -> tuple[int, np.ndarray, np.ndarray]:
        rows, puzzles, size = [], [], 0
        while pos < len(order) and size < self.global_batch_size:
            g = order[pos]
            puzzle = rng.integers(index.group_indices[g], index.group_indices[g + 1])
            pos += 1
            start = index.puzzle_indices[puzzle]
            n_examples = int(index.puzzle_indices[puzzle + 1] - start)
            take = min(n_examples, self.global_batch_size - size)
            rows.append(start + example_rng.choice(n_examples, take, replace=False))
            puzzles.append(np.full(take, puzzle, dtype=np.int32))
            size += take
        if not rows:
            return pos, np.zeros(0, np.int64), np.zeros(0, np.int32)
        return pos, np.concatenate(rows).astype(np.int64), np.concatenate(puzzles)
