"""Is the Hugging Face Hub usable from here, and what to tell a user whose node has no Hub.

huggingface_hub decides: `HF_HUB_OFFLINE=1` (its `constants.HF_HUB_OFFLINE`, read when it is
imported, or set later in this process) means no network at all; otherwise one HEAD request through
huggingface_hub's own HTTP session (which honours HTTPS_PROXY, HF_ENDPOINT and its TLS settings),
answered within a few seconds, instead of its ~10 s timeout per file on a node whose firewall drops
packets. Models, tokenizers and datasets are looked up in the local cache first either way
(`storytune.train.model.from_cache_or_hub`), so this only decides whether to try the Hub after that.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_requested() -> bool:
    """The user (or CI) said not to touch the Hub: huggingface_hub's offline mode, or one of the
    offline variables set in this process after huggingface_hub was imported."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or any(os.environ.get(v, "").lower() in _TRUE for v in OFFLINE_VARIABLES)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the Hub endpoint answers a HEAD request within `timeout_s` seconds (any HTTP
    status counts: the server is there), asked through huggingface_hub's session."""
    if offline_requested():
        return False
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception as err:  # noqa: BLE001  (httpx connection/timeout/proxy errors, OfflineModeIsEnabled)
        log.info("Hugging Face Hub %s unreachable: %s: %s", constants.ENDPOINT, type(err).__name__, err)
        return False
    return True


def hub_cache_dir() -> str:
    """Where huggingface_hub keeps downloads (`$HF_HUB_CACHE`, else `$HF_HOME/hub`)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def download_hint(name: str, repo_type: str = "model") -> str:
    """How to put `name` in the cache the jobs read, from a machine that has the Hub."""
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    return (f"pre-download it where there is internet (e.g. the login node, with the same HF_HOME as the jobs): "
            f"`hf download {name}{kind}` (huggingface_hub < 1.0: `huggingface-cli download {name}{kind}`)")
