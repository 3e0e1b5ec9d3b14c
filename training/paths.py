"""Default locations of the training tools, the same from a clone and from an install.

The tools run from the repository (``python -m training``) or installed as the console script
``spectral-transcoder-train`` (the wheel carries this folder as ``spectral_transcoder_training``).
Defaults never point inside site-packages: the read-only reference folder is
``$ST_SHARED_DIR``, else ``../shared`` beside the repository (a clone), else ``../shared``
relative to the working directory; shipping writes into the repository's package folder
and needs ``--dest`` outside a clone.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "shared_dir", "package_models_dir"]


def repo_root() -> Path | None:
    """The repository holding this folder, or None when the tools run from an install."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "training" / "paths.py").is_file() else None


def shared_dir() -> Path:
    """The read-only reference folder (teachers in ``models/``, audio in ``data/``)."""
    env = os.environ.get("ST_SHARED_DIR")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    return root.parent / "shared" if root is not None else Path("..") / "shared"


def package_models_dir() -> Path | None:
    """The repository's ``python/spectral_transcoder/models_data`` (where ``ship`` writes), or None."""
    root = repo_root()
    return None if root is None else root / "python" / "spectral_transcoder" / "models_data"
