"""A training run relayed across machines that each hold it for a short lease.

``pack`` turns a run's newest training state (``train_state_step_N``, see ``checkpointing.py``) plus the run's
``all_config.yaml`` and ``metrics.jsonl`` into numbered parts of at most ``part_size`` bytes and a manifest
``relay.json`` with the SHA-256 of every part, of every file and of the whole. The parts can travel through any
channel with a per-file size limit; ``unpack`` on the next machine checks each part, joins them, checks the
files, and writes them into a checkpoint folder that ``trm-train ... resume=<folder>`` continues from.

The ACT carry (the recursion state of the batch in flight) is the largest part of a training state (for Sudoku
MLP-t at batch 768, 150 MB of the 230). ``carry=False`` leaves it out: the next machine then starts every row of
its first batch afresh, as the first step of a run does (docs/TRAINING.md, "Relaying a run over short machine
leases", on its effect).
With the carry the resumed run is bit-exact.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx

from trm_mlx.atomic import atomic_folder, write_atomically
from trm_mlx.checkpoint import CONFIG_FILE
from trm_mlx.training.checkpointing import (
    ARRAYS_FILE,
    STATE_FILE,
    export_model,
    find_train_state,
    read_train_state_meta,
)
from trm_mlx.training.logging import METRICS_FILE
from trm_mlx.user_errors import one_line_errors

MANIFEST = "relay.json"
RELAY_FORMAT = "trm-mlx-relay"
RELAY_VERSION = 1
PART_SIZE = 16 * 2**20
RUN_FILES = (CONFIG_FILE, METRICS_FILE)  # beside the training state in the checkpoint folder
CHUNK = 2**20


class RelayError(ValueError):
    """A relay folder that cannot be unpacked: a part missing, short, or not the bytes that were packed."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def parse_size(text: str) -> int:
    """``16MiB``, ``15MB``, ``512KiB`` or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*(|B|KB|KiB|MB|MiB|GB|GiB)\s*", text)
    if not match:
        raise ValueError(f"size {text!r}: expected a number with an optional unit (KiB, MiB, GiB, KB, MB, GB)")
    units = {"": 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}
    size = int(match[1]) * units[match[2]]
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


def _state_files(state_dir: Path, staging: Path, carry: bool) -> list[tuple[str, Path]]:
    """(name in the relay, file) of the state, the arrays rewritten without ``carry.*`` when ``carry`` is False."""
    arrays = state_dir / ARRAYS_FILE
    if not carry:
        kept = {k: v for k, v in mx.load(str(arrays)).items() if not k.startswith("carry.")}
        arrays = staging / ARRAYS_FILE
        mx.save_safetensors(str(arrays), kept)
    return [(f"state/{STATE_FILE}", state_dir / STATE_FILE), (f"state/{ARRAYS_FILE}", arrays)]


def pack(source: str | Path, out_dir: str | Path, part_size: int = PART_SIZE, carry: bool = True) -> dict:
    """Write the newest training state under ``source`` (a checkpoint folder or a ``train_state_step_N`` folder)
    as ``part-NNN`` files and ``relay.json`` into ``out_dir``; returns the manifest."""
    state_dir = find_train_state(source)
    meta = read_train_state_meta(state_dir)
    run_dir = state_dir.parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob("part-*")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    for path in stale:
        path.unlink()

    with tempfile.TemporaryDirectory(prefix=".relay.", dir=out) as staging:
        files = _state_files(state_dir, Path(staging), carry)
        files += [(name, run_dir / name) for name in RUN_FILES if (run_dir / name).is_file()]
        entries, parts = [], []
        whole = hashlib.sha256()
        part, part_digest, part_bytes = None, None, 0

        def close_part():
            part.close()
            parts[-1].update(size=part_bytes, sha256=part_digest.hexdigest())

        for name, path in files:
            file_digest = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    whole.update(block)
                    file_digest.update(block)
                    while block:
                        if part is None or part_bytes == part_size:
                            if part is not None:
                                close_part()
                            parts.append({"name": f"part-{len(parts):03d}"})
                            part, part_digest, part_bytes = (out / parts[-1]["name"]).open("wb"), hashlib.sha256(), 0
                        take = block[: part_size - part_bytes]
                        part.write(take)
                        part_digest.update(take)
                        part_bytes += len(take)
                        block = block[len(take):]
            entries.append({"name": name, "size": path.stat().st_size, "sha256": file_digest.hexdigest()})
        if part is not None:
            close_part()

    manifest = {
        "format": RELAY_FORMAT,
        "version": RELAY_VERSION,
        "step": meta["step"],
        "state_name": state_dir.name,
        "carry": carry,
        "part_size": part_size,
        "size": sum(entry["size"] for entry in entries),
        "sha256": whole.hexdigest(),
        "files": entries,
        "parts": parts,
    }
    write_atomically(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(relay_dir: str | Path) -> dict:
    path = Path(relay_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RelayError(f"{path}: no relay manifest (pack one with `trm-relay pack`)") from None
    except json.JSONDecodeError as e:
        raise RelayError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != RELAY_FORMAT or manifest.get("version") != RELAY_VERSION:
        raise RelayError(f"{path}: not a {RELAY_FORMAT} v{RELAY_VERSION} manifest")
    return manifest


def verify_parts(relay_dir: str | Path) -> dict:
    """The manifest, once every part is present with its recorded size and SHA-256 (else a :class:`RelayError`
    naming each bad part)."""
    relay_dir = Path(relay_dir)
    manifest = read_manifest(relay_dir)
    problems = []
    for part in manifest["parts"]:
        path = relay_dir / part["name"]
        if not path.is_file():
            problems.append(f"{part['name']} missing")
        elif path.stat().st_size != part["size"]:
            problems.append(f"{part['name']} has {path.stat().st_size} bytes, packed {part['size']}")
        elif _sha256(path) != part["sha256"]:
            problems.append(f"{part['name']} checksum differs from the packed part")
    if problems:
        raise RelayError(f"{relay_dir}: " + "; ".join(problems))
    return manifest


def unpack(relay_dir: str | Path, checkpoint_path: str | Path) -> Path:
    """Check and join the parts in ``relay_dir`` into ``checkpoint_path`` (the training state as
    ``train_state_step_N``, ``all_config.yaml`` and ``metrics.jsonl`` beside it); returns the state's folder.

    The state is written to a temporary folder and renamed into place; nothing in ``checkpoint_path`` changes
    unless every check passes.
    """
    relay_dir, root = Path(relay_dir), Path(checkpoint_path)
    manifest = verify_parts(relay_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".relay.", dir=root))
    try:
        whole = hashlib.sha256()
        parts = iter(manifest["parts"])
        source, left = None, 0
        for entry in manifest["files"]:
            target = staging / entry["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, need = hashlib.sha256(), entry["size"]
            with target.open("wb") as f:
                while need:
                    if left == 0:
                        if source is not None:
                            source.close()
                        part = next(parts)
                        source, left = (relay_dir / part["name"]).open("rb"), part["size"]
                    block = source.read(min(need, left, CHUNK))
                    f.write(block)
                    digest.update(block)
                    whole.update(block)
                    need -= len(block)
                    left -= len(block)
            if digest.hexdigest() != entry["sha256"]:
                raise RelayError(f"{relay_dir}: {entry['name']} joined from the parts differs from the packed file")
        if source is not None:
            source.close()
        if whole.hexdigest() != manifest["sha256"]:
            raise RelayError(f"{relay_dir}: the joined parts differ from what was packed")

        state_dir = root / manifest["state_name"]
        with atomic_folder(state_dir) as folder:
            for file in (staging / "state").iterdir():
                os.replace(file, folder / file.name)
        for name in RUN_FILES:
            if (staging / name).is_file():
                os.replace(staging / name, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return state_dir


def main(argv: list[str] | None = None) -> None:
    """``trm-relay pack CHECKPOINT_PATH OUT_DIR`` / ``unpack RELAY_DIR CHECKPOINT_PATH`` / ``export SOURCE OUT``."""
    import argparse

    parser = argparse.ArgumentParser(prog="trm-relay", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="a run's newest training state as checksummed parts")
    packing.add_argument("source", help="checkpoint folder of the run (or one train_state_step_N folder)")
    packing.add_argument("out_dir", help="folder for part-NNN and relay.json")
    packing.add_argument("--part-size", default=f"{PART_SIZE // 2**20}MiB", help="largest part (default %(default)s)")
    packing.add_argument("--no-carry", action="store_true",
                         help="leave the ACT carry out (150 MB for Sudoku at batch 768); the next machine restarts it")
    unpacking = commands.add_parser("unpack", help="check and join parts into a checkpoint folder to resume from")
    unpacking.add_argument("relay_dir", help="folder holding relay.json and every part")
    unpacking.add_argument("checkpoint_path", help="checkpoint folder to write the run into")
    exporting = commands.add_parser("export", help="a training state's model (its EMA weights when it has them) "
                                                   "as a native checkpoint for trm-eval and trm_mlx.load")
    exporting.add_argument("source", help="checkpoint folder of the run (or one train_state_step_N folder)")
    exporting.add_argument("out", help="checkpoint file to write (in a folder, one that exists or a name ending "
                                       "in /: its model.safetensors), "
                                       "the run's all_config.yaml beside it")
    args = parser.parse_args(argv)
    with one_line_errors("trm-relay"):
        if args.command == "pack":
            manifest = pack(args.source, args.out_dir, parse_size(args.part_size), carry=not args.no_carry)
            count = len(manifest["parts"])
            print(f"step {manifest['step']}: {manifest['size'] / 2**20:.1f} MiB in {count} part{'s' * (count != 1)} "
                  f"under {args.out_dir} ({'with' if manifest['carry'] else 'without'} the carry)")
        elif args.command == "unpack":
            state_dir = unpack(args.relay_dir, args.checkpoint_path)
            print(f"checked and joined: continue with resume={state_dir}")
        else:
            print(f"wrote {export_model(args.source, args.out)}")


if __name__ == "__main__":
    main()
