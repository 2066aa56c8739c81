"""The Hugging Face hub is offline for every model atmflow loads.

atmflow never downloads weights, configs or tokenizers at run time (README, "Two commands"): they come from
installed packages, local folders or the local hub cache. Some loaders still try the hub first when a file
is missing (open_clip's Hugging Face tokenizers, transformers' ``from_pretrained``), and without network
that is ~20 s of retries before the error. :func:`hub_offline` sets ``HF_HUB_OFFLINE=1`` for this process
(and its children) and in ``huggingface_hub``, which read it once at import, so that a missing model fails
at once, with atmflow's message naming the command that fetches it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def hub_offline() -> None:
    """Hugging Face hub offline for this process from now on (idempotent; call before loading a model)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True


def hub_cache(cache_dir: str) -> str:
    """The Hugging Face hub cache folder that is searched: ``cache_dir`` (``hf-cache-dir``), or the default."""
    from huggingface_hub import constants

    return cache_dir or str(constants.HF_HUB_CACHE)


def local_snapshot(hub_id: str, cache_dir: str) -> Path | None:
    """The folder of ``hub_id``'s snapshot in the local Hugging Face cache, or None when it is not there
    (never downloads)."""
    hub_offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True, cache_dir=cache_dir or None))
    except LocalEntryNotFoundError:
        return None


def load_checked_weights(load: Callable[..., tuple[Any, dict[str, list[str]]]], path: Path, what: str,
                         error: type[Exception], **kwargs: Any) -> dict[str, Any]:
    """The state dict (keys prefixed ``model.``) of ``load(path, output_loading_info=True, **kwargs)`` (a
    transformers ``from_pretrained``), with its unused-tensor warnings silenced (a two-tower checkpoint's other
    tower, an unused pooler). Raises ``error`` naming ``what`` when the folder has no weights or lacks any of
    the model's tensors (an incomplete or wrong checkpoint)."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        loaded, info = load(str(path), output_loading_info=True, **kwargs)
    except OSError as err:
        raise error(f"no weights of {what} in {path}: {err}") from None
    finally:
        logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise error(f"the checkpoint of {what} in {path} lacks tensors {sorted(info['missing_keys'])[:5]}: "
                    "incomplete or wrong weights")
    return {f"model.{k}": v for k, v in loaded.state_dict().items()}
