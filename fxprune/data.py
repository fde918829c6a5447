"""Where the shared data folder is: ``$FXPRUNE_DATA``, else ``../shared/data`` when present."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path | None:
    """The data folder, or None when neither ``$FXPRUNE_DATA`` nor the default exists."""
    configured = os.environ.get("FXPRUNE_DATA")
    candidates = [Path(configured)] if configured else []
    candidates += [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None
