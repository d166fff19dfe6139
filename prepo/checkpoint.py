"""Atomic training checkpoints: model weights as safetensors (Hugging Face layout), the rest via torch.save.

A checkpoint is written to a temporary folder beside its final place, fsynced and renamed, so a crash never leaves a
half-written one; optimizer, RNG, sampler and strategy state are plain containers of tensors, loaded weights_only.
An FSDP2 run also writes its sharded model and optimizer state with torch.distributed.checkpoint (``dcp/``).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^step-(\d+)$")
# a save in progress: .tmp-step-N-<pid>-<random> (.tmp-step-N-sharded-<pid> under FSDP), .old-step-N-<pid>-<random>
_UNFINISHED = re.compile(r"^\.(?:tmp|old)-step-\d+-(?:sharded-)?(?:(\d+)-|(\d+)$)?")
STATE_FILE = "state.pt"
WEIGHTS_FILE = "model.safetensors"
SHARDED_DIR = "dcp"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run folder a checkpoint belongs to (<run>/checkpoints/step-N), or the path itself."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Python, numpy (legacy global) and torch RNG states as tensors / plain containers (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, state: dict, *, tokenizer=None,
                    keep: int = 0, tmp: Path | None = None, weights: dict | None = None) -> Path:
    """Write ``checkpoints/step-NNNNNN/`` (model weights + ``state``) atomically; keep the newest ``keep`` (0 = all).

    ``tmp``: a temporary folder already holding part of the checkpoint (save_sharded_checkpoint); ``weights``: the
    full state dict to write instead of ``model``'s own (which is sharded under FSDP).
    """
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = tmp if tmp is not None else Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-{os.getpid()}-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        if final.exists():  # same step saved again (e.g. Ctrl-C right after a periodic save): replace it
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-{os.getpid()}-", dir=root))
            os.rename(final, old / final.name)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(root)
    except Exception as exc:  # safetensors and torch.save report a full disk or a file-size limit as their own types
        raise CheckpointWriteError(f"could not write the checkpoint {final} ({_detail(exc)})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep > 0:
        for stale in list_checkpoints(run_dir)[:-keep]:
            discard(stale)
    return final


def discard(checkpoint: Path) -> None:
    """Delete a checkpoint: renamed to an unfinished name first, so an interrupted deletion leaves a folder that
    remove_unfinished cleans, never a partial ``step-*`` that looks complete."""
    old = Path(tempfile.mkdtemp(prefix=f".old-{checkpoint.name}-{os.getpid()}-", dir=checkpoint.parent))
    os.rename(checkpoint, old / checkpoint.name)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """The step of a ``step-NNNNNN`` folder."""
    m = _NAME.match(Path(checkpoint).name)
    if m is None:
        raise ValueError(f"checkpoint: {checkpoint} is not a step-NNNNNN folder")
    return int(m.group(1))


def set_aside_later(run_dir: str | os.PathLike, step: int, dest: Path) -> list[Path]:
    """Move the run's checkpoints later than ``step`` into ``dest/checkpoints/`` (resuming an earlier checkpoint
    starts a branch: the abandoned one is kept whole, never mixed in). Returns their new paths."""
    later = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    moved = []
    if later:
        (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
    for path in later:
        os.rename(path, dest / "checkpoints" / path.name)
        moved.append(dest / "checkpoints" / path.name)
    if moved:
        _fsync_dir(checkpoints_dir(run_dir))
    return moved


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_unfinished(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders that interrupted saves and deletions left in ``checkpoints/`` (never a complete
    checkpoint: a ``step-*`` folder without its state file is a deletion's remains); a folder whose writer (the pid in
    its name) is still running on this machine is left alone. Returns those removed."""
    root = checkpoints_dir(run_dir)
    removed = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if _NAME.match(path.name) and path.is_dir() and not (path / STATE_FILE).exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            continue
        m = _UNFINISHED.match(path.name)
        if not m or not path.is_dir():
            continue
        pid = m.group(1) or m.group(2)
        if pid is not None and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run folder; FileNotFoundError when there is none."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"resume: no checkpoint in {path} (expected {path}/checkpoints/step-NNNNNN/)")
    return found[-1]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt (the message names it and the checkpoint before it)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit, a read-only folder); nothing partial is
    left in its place."""


def _detail(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":").splitlines()[0][:200]


def _corrupt(path: Path, name: str, exc: BaseException) -> CheckpointError:
    in_run = path.parent.name == "checkpoints"
    earlier = [p for p in list_checkpoints(run_dir_of(path)) if p.name < path.name] if in_run else []
    advice = (f"resume from the previous checkpoint instead: --resume {earlier[-1]}" if earlier
              else "no earlier checkpoint to fall back on")
    return CheckpointError(f"checkpoint file {path / name} is truncated or corrupt ({_detail(exc)}); {advice}")


def read_state(path: str | os.PathLike, *, check_weights: bool = True) -> dict:
    """The saved host state of a checkpoint (torch.load, weights_only), after checking that its safetensors weights
    file is complete; CheckpointError naming the bad file (and the previous checkpoint) otherwise."""
    from safetensors import safe_open

    path = Path(path)
    if check_weights:
        try:
            with safe_open(str(path / WEIGHTS_FILE), framework="pt"):
                pass  # opening reads and checks the header against the file size
        except Exception as exc:
            raise _corrupt(path, WEIGHTS_FILE, exc) from None
    try:
        state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise _corrupt(path, STATE_FILE, exc) from None
    if not isinstance(state, dict) or "step" not in state:
        raise _corrupt(path, STATE_FILE, ValueError("not a prepo training state"))
    return state


def load_weights(path: str | os.PathLike, model) -> None:
    """Load a checkpoint's safetensors weights into ``model`` (in place)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        weights = load_file(str(path / WEIGHTS_FILE), device=str(next(model.parameters()).device))
    except Exception as exc:
        raise _corrupt(path, WEIGHTS_FILE, exc) from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {path}: weights the model does not have: {sorted(unexpected)[:5]}")
    tied = _tied_names(model)
    untied_missing = [k for k in missing if k not in tied]
    if untied_missing:
        raise ValueError(f"checkpoint {path}: missing weights {untied_missing[:5]}")


def _tied_names(model) -> set[str]:
    """Parameter names that share storage with another parameter (saved once, e.g. a tied lm_head)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr()
        if key in seen:
            tied.update({name, seen[key]})
        else:
            seen[key] = name
    return tied


# --- FSDP2 (sharded) checkpoints ------------------------------------------------------------------------------------

def save_sharded_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer, state: dict, *, dist,
                            tokenizer=None, keep: int = 0) -> Path | None:
    """Every rank: its shards of model and optimizer state into ``dcp/`` (torch.distributed.checkpoint); rank 0: the
    full weights as safetensors (a Hugging Face folder, loadable without torch.distributed) and ``state``. Written
    in a temporary folder and renamed by rank 0 once all ranks are done. Returns the folder on rank 0."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    root = checkpoints_dir(run_dir)
    (pid,) = dist.gather([os.getpid()] if dist.is_main else [])  # rank 0's: it owns (and renames) the folder
    tmp = root / f".tmp-step-{step:06d}-sharded-{pid}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model_shards, optim_shards = get_state_dict(model, optimizer)
    dcp.save({"model": model_shards, "optimizer": optim_shards}, checkpoint_id=str(tmp / SHARDED_DIR))
    dist.barrier()
    path = None
    if dist.is_main:
        seen: set[int] = set()
        for name, param in model.named_parameters(remove_duplicate=False):  # a tied weight is saved once
            if id(param) in seen:
                weights.pop(name, None)
            seen.add(id(param))
        path = save_checkpoint(run_dir, step, model, state, tokenizer=tokenizer, keep=keep, tmp=tmp, weights=weights)
    dist.barrier()
    return path


def load_sharded_checkpoint(path: str | os.PathLike, model, optimizer) -> dict:
    """Every rank: load its model and optimizer shards from ``dcp/``; returns the saved host state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    if not (path / SHARDED_DIR).is_dir():
        raise FileNotFoundError(f"resume: {path} has no sharded state ({SHARDED_DIR}/); it was not written by an "
                                "FSDP run (resume it with run.parallel=ddp)")
    model_shards, optim_shards = get_state_dict(model, optimizer)
    shards = {"model": model_shards, "optimizer": optim_shards}
    dcp.load(shards, checkpoint_id=str(path / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    return read_state(path, check_weights=False)
