"""Hub access that fails fast: offline is normal, and a retry loop helps nobody."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from hftool.errors import HftoolError

HUB_HOST = "huggingface.co"
T = TypeVar("T")


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or its older cousins) is set: use the local cache only."""
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub answers within 3 s (checked once per process)."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=3):
            return True
    except OSError:
        return False


def from_hub(kind: str, name: str, instead: str, load: Callable[[], T]) -> T:
    """Run `load` for a hub id, failing fast with a message naming what to pass instead.

    In offline mode the load runs against the local cache; with no network and no offline mode
    it does not run at all (it would sit through ~25 s of retries before failing).
    """
    hint = f"pass {instead} instead"
    if not offline_mode() and not hub_reachable():
        raise HftoolError(
            f"{kind} '{name}' is not a local path and the Hugging Face Hub cannot be reached; {hint} "
            "(or set HF_HUB_OFFLINE=1 if it is in your local HF cache)"
        )
    try:
        return load()
    except (OSError, ValueError, FileNotFoundError) as err:
        reason = "it is not in the local HF cache (HF_HUB_OFFLINE is set)" if offline_mode() else str(err).splitlines()[0]
        raise HftoolError(f"{kind} '{name}' could not be loaded: {reason}; {hint}") from None
