"""Checkpoints: atomic writes, safe loads, and the RNG states a bit-exact resume needs.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code). Writes go to a temporary file in the
target's directory, are flushed and fsynced, then ``os.replace``-d over the target: a reader (or
a run killed with SIGKILL mid-write) sees the old file or the new one, never half of one; a write
that fails (a full disk) removes its temporary file and leaves the previous checkpoint as it was.

Loads check the zip archive's CRC32 of every entry first (``torch.load`` alone accepts a file whose
tensor bytes were damaged and returns wrong numbers), then unpickle with ``weights_only=True``: a
file holding anything but tensors and plain containers is refused without running any of it.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import tempfile
import zipfile
from typing import Any

import numpy as np
import torch

from seqbucket_plugin.errors import CheckpointError

__all__ = ["atomic_save", "capture_rng_state", "load_checkpoint", "remove_stale_temporaries", "restore_rng_state",
           "verify_checkpoint"]


TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".pt"


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Remove the temporary files (``.tmp-*.pt``) that a write killed before its rename left in
    ``directory`` (a process killed with SIGKILL cannot clean up); returns the names removed.
    One process writes a run's checkpoints, so none of them is still being written."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file + fsync + ``os.replace``); first the
    temporary files of killed writes in that directory are removed.

    Raises:
        CheckpointError: the write failed (e.g. no space left on device); the temporary file is
            removed and a previous file at ``path`` is unchanged.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # torch.save's zip writer reports a failed write as a RuntimeError ("unexpected pos ..."),
        # the file's close as the OSError itself
        if isinstance(err, (OSError, RuntimeError)):
            causes = [err, err.__context__, err.__cause__]
            full = any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in causes)
            kept = "the previous file is unchanged" if os.path.exists(path) else "nothing was written"
            raise CheckpointError(f"could not write ({'disk full: ' if full else ''}{err}); {kept}", path) from err
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check that ``path`` is a complete ``torch.save`` zip archive whose entries match their CRC32.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated, not a zip archive, or an entry's bytes are damaged.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError("the file is empty (truncated checkpoint)", path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise CheckpointError(f"not a complete checkpoint: truncated, corrupt or not written by torch.save "
                              f"({err})", path) from err
    if damaged is not None:
        raise CheckpointError(f"corrupt checkpoint: the bytes of {damaged!r} do not match their checksum", path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`atomic_save`: checksums first (:func:`verify_checkpoint`),
    then ``torch.load(..., weights_only=True)``. Nothing is written anywhere.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated or corrupt, or it holds Python objects other than tensors and
            plain containers (refused without running them).
    """
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise CheckpointError(
            "refused: the file holds Python objects other than tensors, numbers, strings, lists and dicts "
            "(a pickle that could run code); it was not executed. Only plain-data checkpoints load "
            "(torch.load weights_only=True)" + (f". Detail: {lines[0].strip()}" if lines else ""),
            path) from err
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(f"could not read the checkpoint ({type(err).__name__}: {err})", path) from err


def capture_rng_state(cuda: bool = False) -> dict:
    """The RNG states of torch (CPU and, with ``cuda``, every CUDA device), Python and numpy,
    as tensors and plain values (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only when CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
