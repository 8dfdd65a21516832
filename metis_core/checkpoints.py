"""Checkpoints a resume can trust: written so that a half-written one is never picked.

    checkpoints/step-000007/          DeepSpeed's files, the HF export (hf/), and last of all
    checkpoints/step-000007/manifest.json   every file's size: the checkpoint is complete
    checkpoints/latest.json           {"tag", "step"} of the newest complete one (for people)

A checkpoint counts only once its manifest is written (atomically, after every other file), and
only while every file it lists is there with its size: a kill while saving, a full disk, or a file
truncated or deleted by hand leaves a folder a resume passes over, with a warning, for the newest
complete one before it. Rewriting a step's checkpoint removes its manifest first. A checkpoint at
step s is written after step s is fully recorded (DuckDB, MLflow), so resuming from it continues at
s + 1 and replays, identically, whatever came after.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metis_core.run import read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected."""


@dataclass(frozen=True)
class Checkpoint:
    tag: str
    step: int
    path: Path


def tag_of(step: int) -> str:
    return f"step-{step:06d}"


def write(directory: Path, step: int, save: Callable[[Path], None], keep: int = 2) -> Checkpoint:
    """Save step `step` with `save(folder)` (which writes every file of it), then mark it complete
    and point latest.json at it; keep the newest `keep` complete checkpoints."""
    tag = tag_of(step)
    folder = directory / tag
    (folder / MANIFEST).unlink(missing_ok=True)  # a rewrite is incomplete until it is finished
    try:
        save(folder)
        files = {
            str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        _sync(folder)
        write_json(folder / MANIFEST, {"tag": tag, "step": step, "files": files})
        write_json(directory / "latest.json", {"tag": tag, "step": step})
    except Exception as error:
        if not _disk_full(error, directory):
            raise
        if not (folder / MANIFEST).is_file():  # part-written: its files only take space
            shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointError(
            f"checkpoint {tag} could not be written: no space left under {directory} ({error}). "
            "Part-written files are removed and the complete checkpoints are kept. Free some "
            "space (older runs' checkpoints/ folders are the largest files) and rerun the same "
            "command: the run resumes from its newest complete checkpoint (or from its start)."
        ) from error
    complete = [c for c in _folders(directory) if _damage(c) is None]
    for old in complete[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return Checkpoint(tag, step, folder)


def resumable(directory: Path) -> list[Checkpoint]:
    """The complete checkpoints under `directory`, newest first; damaged ones are logged and
    skipped."""
    found = []
    for folder in _folders(directory):
        damage = _damage(folder)
        if damage is None:
            info = read_json(folder / MANIFEST)
            found.append(Checkpoint(info["tag"], int(info["step"]), folder))
        else:
            log.warning("checkpoint %s is not usable (%s); trying an older one", folder, damage)
    return found


def restore(directory: Path, load: Callable[[Checkpoint], None]) -> Checkpoint | None:
    """Load the newest complete checkpoint with `load` (falling back to older ones if loading
    fails); None when the run has none yet. Raises CheckpointError when checkpoints exist but none
    loads."""
    candidates = resumable(directory)
    if not candidates:
        if any(_folders(directory)):
            raise CheckpointError(
                f"{directory} holds checkpoints but none is complete (see the warnings above); "
                "restore a copy, or delete the run folder to start over"
            )
        return None
    errors = []
    for checkpoint in candidates:
        try:
            load(checkpoint)
            return checkpoint
        except Exception as error:  # noqa: BLE001 (a damaged file can raise anything)
            log.warning(
                "checkpoint %s does not load (%s); trying an older one", checkpoint.path, error
            )
            errors.append(f"{checkpoint.tag}: {error}")
    raise CheckpointError(f"no checkpoint under {directory} loads: " + "; ".join(errors))


def _disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed save ran out of space. Writers report it their own way (an OSError with
    ENOSPC; safetensors' message; torch.save's "file write failed"), so a nearly full disk after
    the failure counts too."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(error):
        return True
    try:
        return shutil.disk_usage(directory).free < 64 * 2**20
    except OSError:
        return False


def _folders(directory: Path) -> list[Path]:
    """step-* folders, newest first."""
    return sorted(
        (p for p in directory.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True
    )


def _damage(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no manifest: its writing never finished"
    try:
        files = read_json(manifest)["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable manifest: {error}"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not {size}"
    return None


def _sync(folder: Path) -> None:
    """Flush the checkpoint's files to disk before the manifest says they are there."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
