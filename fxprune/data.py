"""Where the shared data folder is.

``$FXPRUNE_DATA`` names it; ``FXPRUNE_DATA=none`` says there is none (to test or run a checkout
as a fresh clone would). Unset, a source checkout uses ``../shared/data`` beside the checkout
when that exists; an installed copy has no default, so it behaves the same from any folder.
Without a data folder, pretrained CIFAR weights and CIFAR-10 are downloaded on first use
(``fxprune.download``).
"""

from __future__ import annotations

import os
from pathlib import Path

from fxprune.errors import FxpruneError

_REPO_ROOT = Path(__file__).resolve().parent.parent
NO_DATA = "none"


def data_dir() -> Path | None:
    """The data folder, or None when there is none. A ``$FXPRUNE_DATA`` that is not a folder
    is an error rather than a silent fallback, which would download or skip instead."""
    configured = os.environ.get("FXPRUNE_DATA")
    if configured is not None and configured.strip():
        if configured.strip().lower() == NO_DATA:
            return None
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise FxpruneError(f"FXPRUNE_DATA={configured} is not a folder; set it to the fxprune "
                               f"data folder, or to '{NO_DATA}' to use none")
        return path.resolve()
    return _checkout_default()


def _checkout_default() -> Path | None:
    # Only a source checkout (setup.cfg beside the package) has a sibling ``shared`` folder;
    # an installed package lives in site-packages, where no such default makes sense.
    if not (_REPO_ROOT / "setup.cfg").is_file():
        return None
    default = _REPO_ROOT.parent / "shared" / "data"
    return default.resolve() if default.is_dir() else None
