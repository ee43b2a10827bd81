"""Unit tier: the pure core, no root, no network, a few seconds in all.

Puts the repository root on ``sys.path`` so that ``from tests import strategies``
works however pytest is started (``pytest``, ``python -m pytest``, from an IDE).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
