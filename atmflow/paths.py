"""Is a source string a local path or a hub name? One rule for models, weights and data sets."""

from __future__ import annotations

from pathlib import Path


def is_local_path(source: str) -> bool:
    """``source`` names a local file or folder: it starts with ``/``, ``.`` or ``~``, or it exists.

    Anything else is a hub name (a Hugging Face or open_clip id), read from the local cache only."""
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def is_hub_id(source: str) -> bool:
    """``source`` has the form of a Hugging Face hub id, ``org/name`` (and is not a local path)."""
    import re

    return not is_local_path(source) and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
