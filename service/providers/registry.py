"""Protocol name -> module. Adding a wall is one module of the shape in `base.py` and one line."""

from __future__ import annotations

from . import adgate_receipts, inbrain, medioot
from .base import WallProtocol

PROTOCOLS: dict[str, WallProtocol] = {
    "medioot": medioot,
    "inbrain": inbrain,
    "adgate_receipts": adgate_receipts,
}
