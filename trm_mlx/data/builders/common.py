"""What all dataset builders share: atomic output folders, the split files, CSV sources."""

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trm_mlx.atomic import atomic_folder
from trm_mlx.data.metadata import DatasetFormatError, PuzzleDatasetMetadata

INDEX_FIELDS = ("puzzle_identifiers", "puzzle_indices", "group_indices")


def _looks_like_dataset(path: Path) -> bool:
    markers = [path / "identifiers.json", path / "train" / "dataset.json", path / "test" / "dataset.json"]
    return any(m.is_file() for m in markers)


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """Build into a hidden temporary folder beside `output_dir`, then rename it into place.

    A crash or Ctrl-C leaves at most a `.<name>.partial-*` folder, never a half dataset at `output_dir`. An existing
    dataset (or empty folder) at `output_dir` is replaced; any other existing folder is refused.
    """
    output_dir = Path(output_dir).absolute()
    replaceable = output_dir.is_dir() and (not any(output_dir.iterdir()) or _looks_like_dataset(output_dir))
    if output_dir.exists() and not replaceable:
        raise FileExistsError(f"{output_dir}: exists and is not a dataset folder; refusing to replace it")
    with atomic_folder(output_dir) as tmp:
        yield tmp


def write_json(path: Path, obj) -> None:
    """Python's default `json.dump`, as the original writes every JSON file."""
    with open(path, "w") as f:
        json.dump(obj, f)


def save_split(folder: Path, arrays: dict[str, np.ndarray], metadata: PuzzleDatasetMetadata, set_name: str = "all"):
    """`<set>__<field>.npy` for the given arrays and `dataset.json` (index arrays are stored as int32)."""
    folder.mkdir(parents=True, exist_ok=True)
    for field, array in arrays.items():
        if field in INDEX_FIELDS:
            array = np.asarray(array, dtype=np.int32)
        np.save(folder / f"{set_name}__{field}.npy", array)
    write_json(folder / "dataset.json", metadata.model_dump())


class NpyRowWriter:
    """Writes a `[rows, width]` .npy file row block by row block, so huge splits never sit in memory at once."""

    def __init__(self, path: Path, rows: int, width: int, dtype):
        self.path, self.rows, self.written = path, rows, 0
        self.dtype = np.dtype(dtype)
        self._file = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows, width)}
        np.lib.format.write_array_header_1_0(self._file, header)

    def write(self, block: np.ndarray) -> None:
        if self.written + len(block) > self.rows:
            raise RuntimeError(f"{self.path}: more rows than the {self.rows} announced")
        self._file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.written += len(block)

    def close(self) -> None:
        self._file.close()
        if self.written != self.rows:
            raise RuntimeError(f"{self.path}: wrote {self.written} rows, announced {self.rows}")


def source_csv_path(source_repo: str, split: str) -> Path:
    """`<split>.csv` from a local folder, or downloaded from a Hugging Face dataset repository."""
    folder = Path(source_repo).expanduser()
    if folder.is_dir():
        path = folder / f"{split}.csv"
        if not path.is_file():
            raise DatasetFormatError(f"{path}: not found (the source folder must hold train.csv and test.csv)")
        return path
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DatasetFormatError(
            f"--source-repo {source_repo!r} is not a local folder, and downloading it as a Hugging Face dataset "
            "needs the huggingface_hub package: `pip install huggingface_hub`, or pass a folder holding "
            "train.csv and test.csv"
        ) from None
    return Path(hf_hub_download(source_repo, f"{split}.csv", repo_type="dataset"))


def legacy_rng(seed: int | None) -> np.random.RandomState:
    """The legacy NumPy stream the original builders draw from (`np.random.seed(seed)` + `np.random.*`), as an
    object so building never disturbs the caller's global RNG. `None` = unseeded, as the original Sudoku and Maze
    builders are."""
    return np.random.RandomState(seed)


def read_puzzle_csv(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(line number, question, answer, rating) of each row of a `source,question,answer,rating` CSV (header
    skipped)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) is None:
            raise DatasetFormatError(f"{path}: empty file (expected a header source,question,answer,rating)")
        for row in reader:
            if len(row) != 4:
                raise DatasetFormatError(
                    f"{path}:{reader.line_num}: expected 4 columns (source,question,answer,rating), got {len(row)}"
                )
            yield reader.line_num, row[1], row[2], row[3]
