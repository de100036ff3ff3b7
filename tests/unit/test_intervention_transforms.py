"""Key maps and option parsing without a model, against numpy float64 and written-out expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.benchmarks.mmbench import LANGUAGES, llava_prompt
from experiments.benchmarks.mmbench import vlmevalkit_prompt as mmbench_prompt
from experiments.benchmarks.mmmu import mmmu_prompt, vlmevalkit_prompt
from experiments.benchmarks.sample import Sample
from experiments.interventions.accuracy import option_letters, skip_reason
from experiments.interventions.transforms import KEY_MAPS, Moments, apply_map, fit_statistics, key_map

KV, D = 2, 6


def _keys(n: int, seed: int, shift: float, scale: float) -> torch.Tensor:
    """[n, KV, D] correlated keys with mean `shift` (a float32 tensor like the model's)."""
    g = np.random.default_rng(seed)
    mix = g.normal(size=(KV, D, D)) * scale
    return torch.from_numpy(np.einsum("nkd,kde->nke", g.normal(size=(n, KV, D)), mix) + shift).float()


@pytest.mark.parametrize("name", KEY_MAPS)
def test_strength_zero_is_bit_identical(name):
    image, text = _keys(200, 0, 3.0, 1.0), _keys(300, 1, -1.0, 0.5)
    keys = torch.cat([image[:20], text[:20]])[None].transpose(1, 2)  # [1, KV, S, D]
    is_image = torch.tensor([True] * 20 + [False] * 20)[None]
    out = apply_map(keys, is_image, key_map(name, fit_statistics(image, text), 0.2), 0.0)
    assert torch.equal(out, keys)


def test_moments_equal_numpy_covariance_far_from_the_origin():
    keys = _keys(500, 2, 100.0, 1.0)
    moments = Moments()
    for part in keys.split(37):
        moments.add(part)
    mean, cov = moments.mean_cov("image")
    x = keys.double().numpy()
    for h in range(KV):
        np.testing.assert_allclose(mean[h].numpy(), x[:, h].mean(0), rtol=1e-12)
        np.testing.assert_allclose(cov[h].numpy(), np.cov(x[:, h], rowvar=False), atol=1e-9)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_coral_gives_the_shrunk_text_covariance(shrinkage):
    image, text = _keys(400, 3, 2.0, 1.5), _keys(500, 4, -1.0, 0.3)
    stats = fit_statistics(image, text)
    keys = image[None].transpose(1, 2)  # the calibration image keys themselves
    out = apply_map(keys, torch.ones(1, len(image), dtype=torch.bool), key_map("coral", stats, shrinkage), 1.0)
    mapped, x_image, x_text = out[0].transpose(0, 1).double().numpy(), image.double().numpy(), text.double().numpy()
    for h in range(KV):
        def shrunk(c):
            return (1 - shrinkage) * c + shrinkage * np.trace(c) / D * np.eye(D)
        # whitening by the shrunk image covariance: the result's covariance is W C_image W^T with W the map
        source = np.cov(x_image[:, h], rowvar=False)
        target = shrunk(np.cov(x_text[:, h], rowvar=False))
        expected = target if shrinkage == 0 else _expected_coral_cov(source, shrunk(source), target)
        np.testing.assert_allclose(np.cov(mapped[:, h], rowvar=False), expected, atol=1e-4 * np.abs(target).max())
        np.testing.assert_allclose(mapped[:, h].mean(0), x_text[:, h].mean(0), atol=1e-4)


def _expected_coral_cov(source, source_shrunk, target):
    """Cov of x M with M = S^(-1/2) T^(1/2) (symmetric roots, numpy eigh): M^T source M."""
    def power(c, p):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w**p) @ v.T
    m = power(source_shrunk, -0.5) @ power(target, 0.5)
    return m.T @ source @ m


def test_random_shift_has_the_gap_norm_a_new_direction_and_a_seed():
    image, text = _keys(200, 5, 2.0, 1.0), _keys(200, 6, -1.0, 1.0)
    stats = fit_statistics(image, text)
    gap = (stats.text_mean - stats.image_mean).numpy()
    a, b, c = (key_map("random_shift", stats, seed=s).offset.numpy() for s in (0, 0, 1))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(gap, axis=1), rtol=1e-12)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    cosine = (a * gap).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(gap, axis=1)
    assert (np.abs(cosine) < 0.99).all()


def test_heads_and_text_keys_are_left_alone():
    image, text = _keys(100, 7, 2.0, 1.0), _keys(100, 8, -1.0, 1.0)
    keys = torch.cat([image[:10], text[:10]])[None].transpose(1, 2)
    is_image = torch.tensor([True] * 10 + [False] * 10)[None]
    stats = fit_statistics(image, text)
    out = apply_map(keys, is_image, key_map("mean_shift", stats), 1.0, heads=[1])
    assert torch.equal(out[:, 0], keys[:, 0]) and torch.equal(out[:, :, 10:], keys[:, :, 10:])
    gap = (stats.text_mean - stats.image_mean)[1].float()
    torch.testing.assert_close(out[0, 1, :10], keys[0, 1, :10] + gap)


CN = LANGUAGES["mmbench_cn"]


@pytest.mark.parametrize("text, letters", [
    (vlmevalkit_prompt("<image 1> Which?", ["$6", "$7", "$8"], False), ["A", "B", "C"]),
    (mmmu_prompt("Which?", ["x", "y", "z", "w", "v"], False), ["A", "B", "C", "D", "E"]),
    (mmbench_prompt("哪个?", "A. hint line\nB. not options", {"A": "猫", "B": "狗"}, CN), ["A", "B"]),
    (llava_prompt("哪个?", None, {"A": "1", "B": "2", "C": "3", "D": "4"}, CN), ["A", "B", "C", "D"]),
    (vlmevalkit_prompt("What is the value?", [], True), []),
], ids=["mmmu-vlmevalkit", "mmmu-official", "mmbench-hint-with-letters", "mmbench-llava", "mmmu-open"])
def test_option_letters_of_each_prompt_style(text, letters):
    assert option_letters(Sample(id="x", parts=(text,), answer="A")) == letters


def test_open_questions_and_missing_gold_are_skipped():
    text = vlmevalkit_prompt("Which?", ["a", "b"], False)
    assert skip_reason(Sample("x", (text,), "A", {"question_type": "open"})) == "open question"
    assert "not one of the options" in str(skip_reason(Sample("x", (text,), "C")))
    assert skip_reason(Sample("x", (text,), "B", {"question_type": "multiple-choice"})) is None
