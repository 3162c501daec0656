"""Files and folders that appear complete or not at all: written beside their target under a hidden temporary
name, then renamed into place (a rename within one folder is atomic), so that a crash or Ctrl-C never leaves a
half-written checkpoint, dataset or report where a finished one was."""

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed to ``path`` (mode 0644) when the block ends without an
    error and removed otherwise. ``suffix`` is for writers that insist on one (``.npz``, ``.safetensors``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomically(path: str | Path, data: bytes | str) -> Path:
    with atomic_file(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def _fresh_sibling(path: Path, tag: str) -> Path:
    """A new hidden folder beside ``path`` (created with the user's umask, unlike tempfile.mkdtemp's 0700)."""
    while True:
        sibling = path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            sibling.mkdir()
            return sibling
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``path`` to fill, put in place of ``path`` (replacing a folder there) when
    the block ends without an error and removed otherwise; a crash leaves at most a ``.<name>.partial-*`` folder."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(path, "partial")
    try:
        yield tmp
        if path.exists():
            old = _fresh_sibling(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
