"""The loader against the plain reference of the original algorithm (legacy/puzzle_dataset.py), plus seeding,
exact resume, metadata merging, bad-input errors and the prefetcher."""

import json
import time

import numpy as np
import pytest

from legacy.puzzle_dataset import PuzzleDataset as ReferenceDataset
from legacy.puzzle_dataset import PuzzleDatasetConfig
from trm_mlx.data import DatasetFormatError, PuzzleDataset
from trm_mlx.data.prefetch import Prefetcher

SEQ_LEN = 6


def write_dataset(root, split, groups, *, seed, num_ids=50, sets=("all",), ignore_label_id=0):
    """A dataset in the original layout; `groups` lists, per group, the example count of each of its puzzles.
    Token values encode the row so batches can be told apart; labels contain the ignore label 0 now and then."""
    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n for group in groups for n in group]
    n_examples = sum(sizes)
    for set_name in sets:
        inputs = rng.integers(1, 200, size=(n_examples, SEQ_LEN), dtype=np.uint8)
        labels = rng.integers(0, 4, size=(n_examples, SEQ_LEN), dtype=np.uint8)
        np.save(folder / f"{set_name}__inputs.npy", inputs)
        np.save(folder / f"{set_name}__labels.npy", labels)
        np.save(folder / f"{set_name}__puzzle_identifiers.npy", rng.integers(1, num_ids, len(sizes)).astype(np.int32))
        np.save(folder / f"{set_name}__puzzle_indices.npy", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
        np.save(
            folder / f"{set_name}__group_indices.npy",
            np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int32),
        )
    metadata = dict(
        pad_id=0, ignore_label_id=ignore_label_id, blank_identifier_id=0, vocab_size=200, seq_len=SEQ_LEN,
        num_puzzle_identifiers=num_ids, total_groups=len(groups), mean_puzzle_examples=n_examples / len(sizes),
        total_puzzles=len(sizes), sets=list(sets),
    )
    (folder / "dataset.json").write_text(json.dumps(metadata))
    return root


def random_groups(rng, n_groups, max_puzzles=4, max_examples=7):
    return [
        [int(rng.integers(1, max_examples + 1)) for _ in range(rng.integers(1, max_puzzles + 1))]
        for _ in range(n_groups)
    ]


@pytest.fixture
def two_paths(tmp_path):
    rng = np.random.default_rng(0)
    a = write_dataset(tmp_path / "a", "train", random_groups(rng, 23), seed=1, sets=("all", "extra"))
    b = write_dataset(tmp_path / "b", "train", random_groups(rng, 11), seed=2, sets=("all", "extra"))
    for root, seed in ((a, 3), (b, 4)):
        write_dataset(root, "test", random_groups(rng, 9), seed=seed, sets=("all", "extra"))
    return [str(a), str(b)]


def as_numpy(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


def assert_same_stream(ours, reference):
    assert len(ours) == len(reference) > 0
    for (name, batch, size), (ref_name, ref_batch, ref_size) in zip(ours, reference):
        assert (name, size) == (ref_name, ref_size)
        ref_batch = as_numpy(ref_batch)
        assert batch.keys() == ref_batch.keys()
        for key in batch:
            assert batch[key].dtype == np.int32
            np.testing.assert_array_equal(batch[key], ref_batch[key], err_msg=key)


def reference(paths, split, batch, rank, world, seed, epochs=1, test=False):
    config = PuzzleDatasetConfig(
        seed=seed, dataset_paths=paths, global_batch_size=batch, test_set_mode=test, epochs_per_iter=epochs,
        rank=rank, num_replicas=world,
    )
    return ReferenceDataset(config, split)


@pytest.mark.parametrize("world_size", [1, 2])
def test_train_batches_match_the_original_algorithm(two_paths, world_size):
    seed, batch_size, epochs = 7, 12, 2
    for rank in range(world_size):
        ours = PuzzleDataset(two_paths, "train", batch_size, rank, world_size, seed=seed, epochs_per_iter=epochs)
        ref = reference(two_paths, "train", batch_size, rank, world_size, seed, epochs)
        np.random.seed(seed)  # the reference draws examples from NumPy's global RNG; ours from RandomState(seed)
        for _iteration in range(3):  # `_iters` keeps counting across iterations
            assert_same_stream(list(ours.iter_train()), list(ref))
    assert ours.metadata.model_dump() == ref.metadata.model_dump()
    assert list(ours.sets) == ["all", "all1", "extra", "extra1"]


@pytest.mark.parametrize("world_size,batch_size", [(1, 16), (3, 15)])
def test_test_batches_match_the_original_algorithm(two_paths, world_size, batch_size):
    for rank in range(world_size):
        ours = PuzzleDataset(two_paths[:1], "test", batch_size, rank, world_size)
        ref = reference(two_paths[:1], "test", batch_size, rank, world_size, seed=0, test=True)
        assert_same_stream(list(ours.iter_test()), list(ref))


def test_test_batches_pad_and_cover_every_example_once(tmp_path):
    root = write_dataset(tmp_path / "d", "test", [[2, 3], [4]], seed=0)  # 9 examples, puzzles 0,0,1,1,1,2,2,2,2
    ids = np.load(root / "test" / "all__puzzle_identifiers.npy")
    inputs = np.load(root / "test" / "all__inputs.npy")
    seen = []
    for rank in range(2):
        batches = list(PuzzleDataset([str(root)], "test", 8, rank, 2).iter_test())
        assert [size for _, _, size in batches] == [8, 1]
        for _, batch, _ in batches:
            real = batch["puzzle_identifiers"] != 0
            seen.extend(map(tuple, batch["inputs"][real]))
            assert (batch["inputs"][~real] == 0).all() and (batch["labels"][~real] == -100).all()
    # every example exactly once, with the identifier of the puzzle that owns its row
    assert sorted(seen) == sorted(map(tuple, inputs.astype(np.int32)))
    batch = next(PuzzleDataset([str(root)], "test", 8, 0, 2).iter_test())[1]
    np.testing.assert_array_equal(batch["puzzle_identifiers"], ids[[0, 0, 1, 1]])


def test_same_seed_same_batches_other_seed_other_batches(two_paths):
    def run(seed):
        ds = PuzzleDataset(two_paths, "train", 10, seed=seed)
        return [b for _ in range(2) for _, b, _ in ds.iter_train()]

    first, second, other = run(5), run(5), run(6)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, other))


def test_drop_last_and_labels(tmp_path):
    # 5 groups of one 3-example puzzle = 15 examples: batches of 6 give two full batches; the last 3 are dropped
    root = write_dataset(tmp_path / "d", "train", [[3]] * 5, seed=0)
    batches = list(PuzzleDataset([str(root)], "train", 6, seed=1).iter_train())
    assert [size for _, _, size in batches] == [6, 6]
    labels = np.load(root / "train" / "all__labels.npy")
    for _, batch, _ in batches:
        assert (batch["labels"] == -100).sum() > 0 and not (batch["labels"] == 0).any()
        assert set(np.unique(batch["labels"])) <= {-100, 1, 2, 3}
    assert (labels == 0).any()


def test_resume_at_any_point_gives_the_uninterrupted_batches(two_paths):
    def make():
        return PuzzleDataset(two_paths, "train", 12, seed=3, epochs_per_iter=2)

    uninterrupted = make()
    full = [list(uninterrupted.iter_train()) for _ in range(3)]
    flat = [b for iteration in full for _, b, _ in iteration]
    first = len(full[0])
    for stop in [1, 5, first - 1, first, first + 3]:
        ds = make()
        consumed = 0
        while consumed < stop:
            for _ in ds.iter_train():  # abandoned mid-iteration when `stop` is reached
                consumed += 1
                if consumed == stop:
                    break
        state = json.loads(json.dumps(ds.state_dict()))  # must survive a JSON checkpoint
        resumed = make()
        resumed.load_state_dict(state)
        calls = [[b for _, b, _ in resumed.iter_train()] for _ in range(3)]
        rest = [b for call in calls for b in call][: len(flat) - stop]
        assert len(rest) == len(flat) - stop
        for expected, got in zip(flat[stop:], rest):
            for key in expected:
                np.testing.assert_array_equal(expected[key], got[key])
        if stop == first:  # saved right after an iteration's last batch: the next call is the next iteration
            assert state["set_index"] is None
            assert len(calls[0]) == len(full[1])


def test_state_for_another_dataset_is_refused(two_paths):
    ds = PuzzleDataset(two_paths, "train", 12, seed=3)
    next(ds.iter_train())
    state = ds.state_dict()
    state["groups_consumed"] = 10_000
    with pytest.raises(ValueError, match="groups_consumed"):
        ds.load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        ds.load_state_dict({"iters": 1})
    state = ds.state_dict()
    state["example_rng"]["key"] = state["example_rng"]["key"][:10]
    with pytest.raises(ValueError, match="example_rng is not a saved RandomState"):
        ds.load_state_dict(state)


def test_metadata_merge(two_paths, tmp_path):
    ds = PuzzleDataset(two_paths, "train", 4)
    metas = [json.loads((tmp_path / p / "train" / "dataset.json").read_text()) for p in ("a", "b")]
    assert ds.metadata.num_puzzle_identifiers == 100
    assert ds.metadata.total_groups == 34
    assert ds.metadata.total_puzzles == metas[0]["total_puzzles"] + metas[1]["total_puzzles"]
    examples = sum(m["mean_puzzle_examples"] * m["total_puzzles"] for m in metas)
    assert ds.metadata.mean_puzzle_examples == pytest.approx(examples / ds.metadata.total_puzzles)

    other = write_dataset(tmp_path / "c", "train", [[1]], seed=0, ignore_label_id=None)
    with pytest.raises(DatasetFormatError, match=r"c: ignore_label_id = None differs"):
        PuzzleDataset([two_paths[0], str(other)], "train", 4)


def test_bad_datasets_get_clear_errors(tmp_path):
    root = write_dataset(tmp_path / "d", "train", [[2], [3]], seed=0)
    with pytest.raises(DatasetFormatError, match=r"test/dataset.json: not found"):
        PuzzleDataset([str(root)], "test", 4)
    np.save(root / "train" / "all__puzzle_indices.npy", np.array([0, 2, 4], np.int32))
    with pytest.raises(DatasetFormatError, match=r"all__puzzle_indices.npy: must start at 0.*\(5\)"):
        PuzzleDataset([str(root)], "train", 4)
    (root / "train" / "all__labels.npy").unlink()
    with pytest.raises(DatasetFormatError, match=r"all__labels.npy: not found"):
        PuzzleDataset([str(root)], "train", 4)
    (root / "train" / "dataset.json").write_text('{"pad_id": 0}')
    with pytest.raises(DatasetFormatError, match=r"dataset.json: invalid dataset metadata \(ignore_label_id"):
        PuzzleDataset([str(root)], "train", 4)
    with pytest.raises(ValueError, match="multiple of world_size"):
        PuzzleDataset([str(root)], "train", 5, 0, 2)


def test_prefetcher_runs_ahead_reraises_and_closes():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    with Prefetcher(source(), depth=2) as it:
        assert next(it) == 0
        time.sleep(0.2)
        assert 2 <= len(produced) <= 4  # ran ahead, but only as far as the bounded queue allows
    assert not it._thread.is_alive() and len(produced) < 10  # closing stopped the worker early

    def failing():
        yield 1
        raise RuntimeError("worker broke")

    it = Prefetcher(failing())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="worker broke"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
