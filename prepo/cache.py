"""The model cache (~/.cache/prepo, or $PREPO_CACHE): where converted and built models live, and how a folder enters
it whole (written under a temporary name, then renamed into place): a crash or a rival run never leaves half a model.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

CACHE_ENV = "PREPO_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder converted models live in: `cache_dir`, else $PREPO_CACHE, else ~/.cache/prepo."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "prepo"


def fill_once(target: Path, fill: Callable[[Path], object]) -> Path:
    """``target``, made when it holds no config.json yet by ``fill(folder)`` writing into a fresh sibling folder that
    is then renamed to ``target``: a crash never leaves half a model, and a concurrent run's finished folder wins."""
    if (target / "config.json").is_file():
        return target
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any other model folder
    try:
        fill(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished folder: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
