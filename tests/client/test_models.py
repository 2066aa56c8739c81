from __future__ import annotations

import numpy as np
import torch

from atmflow.client.evaluation import evaluate
from atmflow.client.task import encode, load_task
from atmflow.config import RunConfig
from atmflow.models.heads import few_shot_indices, probe_head, random_head
from atmflow.models.mobilenet import FEATURE_DIM, pretrained_encoder, trainable_keys

CPU = torch.device("cpu")


def test_pretrained_encoder_is_the_imagenet_mobilenet() -> None:
    encoder = pretrained_encoder()
    n = sum(p.numel() for p in encoder.parameters())
    assert 2_200_000 < n < 2_300_000  # MobileNetV2 features without the 1000-way classifier
    assert encoder(torch.zeros(2, 3, 64, 64)).shape == (2, FEATURE_DIM)
    assert all("running" not in k and "num_batches" not in k for k in trainable_keys(encoder))


def test_batchnorm_statistics_stay_frozen_in_training_mode() -> None:
    encoder = pretrained_encoder().train()
    before = encoder.features[0][1].running_mean.clone()
    encoder(torch.randn(8, 3, 32, 32) * 5)
    assert torch.equal(before, encoder.features[0][1].running_mean)


def test_probe_head_leaves_headroom_but_beats_chance() -> None:
    data = load_task("fashion-mnist", RunConfig(train_size=500, test_size=200, image_size=32))
    encoder = pretrained_encoder()
    idx = few_shot_indices(data.train.y.numpy(), 3, np.random.default_rng(0))
    assert len(idx) == 30
    head = probe_head(encode(encoder, data.train.x[idx], CPU), data.train.y[idx], 10)
    accuracy, _ = evaluate(encoder, head, data.test, CPU)
    assert 0.3 < accuracy < 0.9  # a weak but meaningful classifier, like CLIP's zero-shot head
    assert list(head.buffers()) and not list(head.parameters())  # frozen: nothing to train


def test_random_head_rows_are_seeded_unit_vectors() -> None:
    a = random_head(10, FEATURE_DIM, seed=3, temperature=10.0)
    b = random_head(10, FEATURE_DIM, seed=3, temperature=10.0)
    assert torch.equal(a.weight, b.weight)
    assert torch.allclose(a.weight.norm(dim=1), torch.ones(10))
    logits = a(torch.randn(4, FEATURE_DIM))
    assert logits.abs().max() <= 10.0 + 1e-5  # temperature times a cosine
