"""``model-family = "hf-vision"``: a transformers image encoder (ViT, DINOv2, SigLIP / CLIP vision towers).

``model`` is the folder of a transformers model (``save_pretrained``, or ``hf download <hub-id>
--local-dir DIR``) or a hub id ``org/name`` read from the local Hugging Face cache (``hf-cache-dir``);
nothing is downloaded, and a missing model raises :class:`WeightsUnavailableError` with the command
that fetches it. The folder needs ``config.json``, the weights and ``preprocessor_config.json``.

The encoder is the model's ``AutoModel`` for its vision config: ``ViTModel``, ``Dinov2Model``, or,
for a CLIP or SigLIP checkpoint (a config with a ``vision_config``), its vision tower
(``CLIPVisionModel``, ``SiglipVisionModel``; the text tower is not loaded). Features: the model's
``pooler_output`` where it has one (CLIP: the layer-normed class token; SigLIP: its attention-pooling
head; DINOv2: the layer-normed class token), else the class token of the last hidden state (ViT,
built without its untrained pooler: ``add_pooling_layer = False``). Every tensor of the encoder
comes from the checkpoint (a checkpoint lacking one is refused: transformers would fill it at
random), every parameter is fine-tuned and merged, and all layers stay in eval mode
(:class:`~atmflow.models.encoders.EvalModeEncoder`: no dropout or stochastic depth).

Images are resized to the model's input size (its processor's ``crop_size``, else ``size``) and
normalised with the processor's ``image_mean`` / ``image_std`` (no crop); ``image-size`` is not used.
"""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from atmflow.data.images import normalize, to_unit_rgb
from atmflow.models.encoders import EvalModeEncoder, single_weights_file
from atmflow.models.family import ModelFamily
from atmflow.models.offline import hub_cache, hub_offline, load_checked_weights, local_snapshot
from atmflow.models.registry import WeightsUnavailableError
from atmflow.paths import is_hub_id, is_local_path

if TYPE_CHECKING:
    from transformers import PretrainedConfig

PROCESSOR_FILE = "preprocessor_config.json"


def model_folder(model: str, cache_dir: str = "") -> Path:
    """The local folder of ``model`` (a folder, or a hub id in the local cache); never downloads."""
    hub_offline()
    if is_local_path(model):
        path = Path(model).expanduser()
    elif is_hub_id(model):
        snapshot = local_snapshot(model, cache_dir)
        if snapshot is None:
            raise WeightsUnavailableError(
                f"image model {model!r} is not in the Hugging Face cache {hub_cache(cache_dir)} (nothing is "
                f"downloaded at run time). Fetch it on a machine with network with: hf download {model}  (then copy "
                "the cache folder here and set hf-cache-dir, or download with --local-dir DIR and set model=DIR)")
        path = snapshot
    else:
        raise ValueError(f"model={model!r}: model-family 'hf-vision' takes the folder of a transformers image model "
                         "or a hub id org/name in the local Hugging Face cache (e.g. facebook/dinov2-small)")
    for name in ("config.json", PROCESSOR_FILE):
        if not (path / name).is_file():
            raise WeightsUnavailableError(
                f"image model {model!r}: no {name} in {path}. The folder must hold a transformers model and its image "
                "processor (model.save_pretrained(DIR) and processor.save_pretrained(DIR), or hf download "
                "<hub-id> --local-dir DIR)")
    return path


def vision_config(path: Path) -> PretrainedConfig:
    """The model's config, or its vision tower's for a two-tower (CLIP, SigLIP) checkpoint."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    return getattr(config, "vision_config", None) or config


def _model_kwargs(config: PretrainedConfig) -> dict[str, Any]:
    """ViT-like models are built without their pooler (see module docstring)."""
    from transformers import AutoModel

    cls = AutoModel._model_mapping[type(config)]
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}


class HFImageEncoder(EvalModeEncoder):
    """A transformers image model: pixels ``[N, 3, S, S]`` -> pooled features (see module docstring)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_config(config, **_model_kwargs(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        return (pooled if pooled is not None else out.last_hidden_state[:, 0]).flatten(1)


@lru_cache(maxsize=2)
def pretrained_state(model: str, cache_dir: str = "") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the encoder's names; a checkpoint lacking any of them is refused."""
    from transformers import AutoModel

    path = model_folder(model, cache_dir)
    config = vision_config(path)
    cls = AutoModel._model_mapping[type(config)]
    return load_checked_weights(cls.from_pretrained, path, f"image model {model!r}", WeightsUnavailableError,
                                **_model_kwargs(config))


@lru_cache(maxsize=4)
def image_processing(model: str, cache_dir: str = "") -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input side in pixels, mean, std) from the model's ``preprocessor_config.json``."""
    path = model_folder(model, cache_dir) / PROCESSOR_FILE
    cfg = json.loads(path.read_text())
    size = cfg.get("crop_size") if cfg.get("do_center_crop") and cfg.get("crop_size") else cfg.get("size")
    side = size if isinstance(size, int) else (size or {}).get("height") or (size or {}).get("shortest_edge")
    if not side or "image_mean" not in cfg or "image_std" not in cfg:
        raise WeightsUnavailableError(f"{path} lacks the input size (size or crop_size), image_mean or image_std")
    return int(side), tuple(cfg["image_mean"]), tuple(cfg["image_std"])


class HFVisionFamily(ModelFamily):
    """See module docstring."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if self.pretrained != "default":
            raise ValueError(f"model-family 'hf-vision' reads the weights from the model's own folder: leave "
                             f"pretrained unset (or 'default'), got pretrained={self.pretrained!r}; set model to the "
                             "folder")

    def _args(self) -> tuple[str, str]:
        return self.model, self.cfg.hf_cache_dir

    def check_available(self) -> None:
        image_processing(*self._args())
        pretrained_state(*self._args())

    def weights_file(self) -> str | None:
        return single_weights_file(model_folder(*self._args()))

    def pretrained_encoder(self) -> HFImageEncoder:
        encoder = HFImageEncoder(vision_config(model_folder(*self._args())))
        encoder.load_state_dict(pretrained_state(*self._args()), strict=True)
        return encoder

    @property
    def feature_dim(self) -> int:
        return _feature_dim(*self._args())

    def preprocess(self, examples: Any) -> torch.Tensor:
        side, mean, std = image_processing(*self._args())
        return normalize(to_unit_rgb(examples, side), mean, std)


@lru_cache(maxsize=4)
def _feature_dim(model: str, cache_dir: str) -> int:
    side = image_processing(model, cache_dir)[0]
    encoder = HFImageEncoder(vision_config(model_folder(model, cache_dir))).eval()
    with torch.no_grad():
        return int(encoder(torch.zeros(1, 3, side, side)).shape[-1])
