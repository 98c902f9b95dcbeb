"""Is the Hugging Face hub reachable? Asked once, quickly, before any hub download.

Offline, the hub clients retry with back-off for half a minute per file before failing with
a connection error; a user without network should instead learn at once which flags take
local paths (--model, --data-dir).
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub's host cannot be reached within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
