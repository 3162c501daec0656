"""trm_mlx.atomic: what was there stays whole when a write fails; a finished write replaces it."""

import pytest

from trm_mlx.atomic import atomic_file, atomic_folder, write_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_atomically(tmp_path / "metrics.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new" and oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_failed_folder_leaves_the_old_folder(tmp_path):
    with atomic_folder(tmp_path / "state") as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "state") as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("interrupted")
    assert (tmp_path / "state" / "a").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["state"]
    with atomic_folder(tmp_path / "state") as tmp:
        (tmp / "b").write_text("3")
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["b"]
