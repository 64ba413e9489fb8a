"""Is the Hugging Face Hub usable from here? Asked once, answered fast.

huggingface_hub retries an unreachable host for ~50 s per file before giving up; a 3-second
connection probe lets storytune fall back (shipped GPT-2 vocabulary) or explain itself at once.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    """The user (or CI) said not to touch the hub."""
    return any(os.environ.get(var, "").lower() in _TRUE for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the hub endpoint accepts a TCP connection within `timeout_s` seconds."""
    if offline_requested():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
