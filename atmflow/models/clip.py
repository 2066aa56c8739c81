"""``model-family = "open_clip"``: CLIP image encoders with frozen zero-shot heads, as in the papers.

The encoder is CLIP's image tower (``model.visual``: images ``[N, 3, S, S]`` -> embeddings
``[N, embed_dim]``); all its parameters are fine-tuned, sent and merged. The text tower only
builds the heads. The zero-shot head of a task (Ilharco et al. 2023, ``task_vectors``
``src/heads.py``; CLIP, Radford et al. 2021): for each class ``c``, every prompt template filled
with ``c`` is encoded by the text tower and L2-normalised; the mean over templates is normalised
again, giving the row ``w_c``; ``logits = exp(logit_scale) * normalize(f(x)) @ W^T``. The head is
frozen (buffers). Images are preprocessed by open_clip's transforms for the model (:func:`clip_transform`):
for evaluation resize to its input size (bicubic), centre crop, CLIP mean / std; for fine-tuning
(``train-transform = "auto"``) open_clip's training transform, a random resized crop (scale 0.9 to 1)
then the same normalisation, as ``open_clip.create_model_and_transforms``'s ``preprocess_train``, which
task_vectors and TaLoS fine-tune with.

Weights (``pretrained``):

* a tag of ``open_clip.list_pretrained_tags_by_model(model)`` (``openai`` ...): read from the local
  Hugging Face cache (``hf-cache-dir``) or open_clip's URL cache, never downloaded at run time; a
  missing file raises :class:`WeightsUnavailableError` naming the model, the tag, the folders
  looked in and the command that fetches it;
* a path to a checkpoint file (an open_clip state dict);
* ``random``: seeded random weights (seed 0), stated explicitly: for tests and smoke runs only.

``model`` is an open_clip model name (``ViT-B-16``, ``ViT-B-32``, ``ViT-L-14``), the package's tiny
test model ``atmflow-tiny-clip`` (``atmflow/models/configs``), or the path of a model config JSON.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atmflow.models.family import ModelFamily
from atmflow.models.heads import FrozenHead
from atmflow.models.offline import hub_offline
from atmflow.models.registry import WeightsUnavailableError
from atmflow.paths import is_local_path

CONFIG_DIR = Path(__file__).parent / "configs"
RANDOM = "random"


def _open_clip() -> Any:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def model_name(model: str) -> str:
    """The open_clip name of ``model`` (a config JSON path is registered and named by its stem)."""
    open_clip = _open_clip()
    if model.endswith(".json"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ValueError(f"model config file {path} not found (run config key model)")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(model) is None:
        raise ValueError(f"unknown open_clip model {model!r} (run config key model); e.g. ViT-B-16, ViT-B-32, "
                         f"ViT-L-14, atmflow-tiny-clip, or a model config .json; all: open_clip.list_models()")
    return model


def fetch_command(model: str, tag: str, cache_dir: str) -> str:
    cache = f", cache_dir={cache_dir!r}" if cache_dir else ""
    return f"python -c \"import open_clip; open_clip.create_model({model!r}, pretrained={tag!r}{cache})\""


def resolve_weights(model: str, pretrained: str, cache_dir: str = "") -> tuple[str | None, dict[str, Any]]:
    """(local checkpoint file or None for ``random``, the tag's pretrained config) - no network."""
    open_clip = _open_clip()
    name = model_name(model)
    if pretrained == RANDOM:
        return None, {}
    if is_local_path(pretrained) or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"open_clip checkpoint file {path} not found (run config key pretrained)")
        return str(path), {}
    pcfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not pcfg:
        raise ValueError(f"pretrained={pretrained!r} is not a tag of open_clip model {name!r}; tags: "
                         f"{open_clip.list_pretrained_tags_by_model(name)}, or a checkpoint path, or 'random'")
    looked: list[str] = []
    if pcfg.get("hf_hub"):
        from huggingface_hub import constants, try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo, filename = os.path.split(pcfg["hf_hub"])  # "org/name/" -> the default file name
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else str(Path(filename).with_suffix(".safetensors"))
        candidates = [safe, filename]
        hub_cache = cache_dir or constants.HF_HUB_CACHE
        for candidate in candidates:
            found = try_to_load_from_cache(repo, candidate, cache_dir=hub_cache)
            if isinstance(found, str) and Path(found).is_file():
                return found, pcfg
        looked.append(f"Hugging Face cache {hub_cache} (repo {repo}, files {candidates})")
    if pcfg.get("url"):
        url_file = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(pcfg["url"])
        if url_file.is_file():
            return str(url_file), pcfg
        looked.append(f"open_clip URL cache file {url_file}")
    raise WeightsUnavailableError(
        f"open_clip weights for model {name!r} with pretrained={pretrained!r} are not on this machine; looked in: "
        f"{'; '.join(looked)}. atmflow never falls back to random weights. Fetch them on a machine with network "
        f"(then copy the cache folder here and set hf-cache-dir): {fetch_command(name, pretrained, cache_dir)}")


@lru_cache(maxsize=2)
def load_clip(model: str, pretrained: str, cache_dir: str = "") -> tuple[nn.Module, Any, Any]:
    """(CLIP model in eval mode, float32 on the CPU; image preprocessing; tokenizer), loaded once."""
    hub_offline()  # a tokenizer or config missing from the cache fails at once instead of retrying the hub
    open_clip = _open_clip()
    name = model_name(model)
    path, pcfg = resolve_weights(model, pretrained, cache_dir)
    kwargs = dict(force_quick_gelu=bool(pcfg.get("quick_gelu", False)), pretrained_image=False,
                  pretrained_text=False, cache_dir=cache_dir or None)
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clip = open_clip.create_model(name, pretrained=None, **kwargs)
    else:
        clip = open_clip.create_model(name, pretrained=path, **kwargs)
    clip = clip.float().eval()
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir or None)
    _check_tokenizer(tokenizer, clip, name)
    return clip, clip_transform(clip, pcfg, train=False), tokenizer


def clip_transform(clip: nn.Module, pcfg: dict[str, Any], *, train: bool) -> Any:
    """open_clip's image transform for ``clip`` with its weights' preprocessing config ``pcfg`` (mean, std,
    interpolation, resize mode): evaluation, or training (``train``: ``image_transform_v2(..., is_train=True)``
    with open_clip's default augmentation, a ``RandomResizedCrop`` of scale (0.9, 1.0)). One function for
    both, as ``open_clip.create_model_and_transforms`` builds them."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = merge_preprocess_dict(PreprocessCfg(), {k: v for k, v in pcfg.items() if k in PreprocessCfg.__annotations__})
    cfg["size"] = clip.visual.image_size
    return image_transform_v2(PreprocessCfg(**cfg), is_train=train)


@lru_cache(maxsize=2)
def load_train_transform(model: str, pretrained: str, cache_dir: str = "") -> Any:
    """The training transform of :func:`load_clip`'s model (see :func:`clip_transform`)."""
    clip = load_clip(model, pretrained, cache_dir)[0]
    return clip_transform(clip, resolve_weights(model, pretrained, cache_dir)[1], train=True)


def _check_tokenizer(tokenizer: Any, clip: nn.Module, name: str) -> None:
    """A tokenizer that does not fit the text tower (e.g. a 2-token stand-in loaded offline) fails."""
    vocab = getattr(tokenizer, "vocab_size", None) or len(getattr(tokenizer, "encoder", {}))
    rows = clip.token_embedding.num_embeddings if hasattr(clip, "token_embedding") else vocab
    if vocab < 1000 or vocab > rows:
        raise WeightsUnavailableError(f"the tokenizer of open_clip model {name!r} has {vocab} tokens but its text "
                                      f"tower embeds {rows}: it was not loaded properly (offline?)")


class CLIPImageEncoder(nn.Module):
    """CLIP's image tower: images -> image embeddings (unnormalised; the head normalises)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


@torch.no_grad()
def zeroshot_head(clip: nn.Module, tokenizer: Any, class_names: tuple[str, ...], templates: str | tuple[str, ...],
                  device: torch.device) -> FrozenHead:
    """The frozen zero-shot head (see module docstring): rows ``w_c``, scale ``exp(logit_scale)``.
    ``templates``: a key of :mod:`atmflow.models.templates`, or the templates themselves (own tasks)."""
    from atmflow.models.templates import prompts

    clip = clip.to(device)
    rows = []
    for name in class_names:
        filled = prompts(templates, name) if isinstance(templates, str) else [t.format(name) for t in templates]
        emb = clip.encode_text(tokenizer(filled).to(device)).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        rows.append(mean / mean.norm())
    weight = torch.stack(rows).cpu()
    scale = float(clip.logit_scale.exp())
    clip.cpu()
    return FrozenHead(weight, torch.zeros(len(class_names)), normalize=True, scale=scale)


def _pil(images: Any) -> list[Any]:
    from PIL import Image

    if isinstance(images, np.ndarray):
        return [Image.fromarray(a) for a in images]
    return list(images)


class OpenCLIPFamily(ModelFamily):
    """See module docstring."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.name = model_name(self.model)

    def _loaded(self) -> tuple[nn.Module, Any, Any]:
        return load_clip(self.model, self.pretrained, self.cfg.hf_cache_dir)

    def check_available(self) -> None:
        resolve_weights(self.model, self.pretrained, self.cfg.hf_cache_dir)

    def weights_file(self) -> str | None:
        return resolve_weights(self.model, self.pretrained, self.cfg.hf_cache_dir)[0]

    def pretrained_encoder(self) -> CLIPImageEncoder:
        return CLIPImageEncoder(copy.deepcopy(self._loaded()[0].visual))

    @property
    def feature_dim(self) -> int:
        return int(self._loaded()[0].visual.output_dim)

    def preprocess(self, examples: Any) -> torch.Tensor:
        transform = self._loaded()[1]
        return torch.stack([transform(im) for im in _pil(examples)])

    def train_preprocess(self, examples: Any) -> torch.Tensor:
        transform = load_train_transform(self.model, self.pretrained, self.cfg.hf_cache_dir)
        return torch.stack([transform(im) for im in _pil(examples)])

    def special_head(self, kind: str, data: Any, device: torch.device) -> FrozenHead:
        if kind != "zeroshot":
            return super().special_head(kind, data, device)
        from atmflow.data.tasks import task_spec

        spec = task_spec(data.name, self.cfg.task_file_path)
        templates = spec.prompt_templates or spec.templates
        if not data.class_names or not templates:
            raise ValueError(f"task {data.name!r} has no class names or prompt templates for a zero-shot head")
        clip, _, tokenizer = self._loaded()
        return zeroshot_head(clip, tokenizer, data.class_names, templates, device)
