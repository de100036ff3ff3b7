"""Interventions on image keys inside the forward pass, against oracles outside the code under test:

- strength 0 gives logits equal to the unmodified model's (bit for bit; attention_boost on eager attention,
  whose op order it copies; within 1e-5 of sdpa);
- mean_shift at strength 1: held-out image keys move by exactly the calibration gap (text mean - image mean),
  and on the calibration samples themselves they land on the text keys' mean; text keys are untouched. The
  keys before the intervention and the statistics come from the model's own KV cache (`KeyCapture`), the
  means from numpy float64;
- coral at strength 1 (no shrinkage) gives the calibration image keys the text keys' covariance and mean
  (numpy float64 `np.cov`);
- option-likelihood accuracy of the stage equals a manual argmax over the full logits (no `logits_to_keep`)
  on real MMMU and MMBench-CN rows, with the letters read from the raw rows; open MMMU questions are skipped
  and counted.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

from experiments.benchmarks import load_samples
from experiments.config import BenchmarkConfig
from experiments.interventions.hooks import Intervene
from experiments.interventions.transforms import fit_statistics, key_map
from experiments.keys.capture import KeyCapture, key_name

from ..conftest import REPO, TINY, tiny_model_config

LAYER = 1
MMMU = REPO / "tests" / "fixtures" / "real_samples" / "mmmu" / "MMMU"


def _samples(n: int, seed: int = 3):
    return [s.decoded() for s in load_samples(BenchmarkConfig(name="synthetic", limit=n, style="mixed",
                                                              seed=seed)).samples]


def _cache_keys(loaded, sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-RoPE keys of LAYER from the model's own KV cache [S, kv_heads, head_dim], and the image mask [S]."""
    adapter, model = loaded.adapter, loaded.model
    inputs = adapter.model_inputs(loaded.processor, [sample])
    with KeyCapture(model, adapter, [LAYER], "post_rope", torch.float32) as capture:
        keys = capture.run(**inputs)[key_name(LAYER, "post_rope")][0]
    head_dim = adapter.attention_module(adapter.layers(model)[LAYER]).head_dim
    return keys.unflatten(-1, (-1, head_dim)), inputs["input_ids"][0] == adapter.image_token_id(model)


def _calibration(loaded, samples):
    """Image and text keys of `samples` at LAYER (KV cache), as numpy float64 [n, kv_heads, head_dim]."""
    image, text = [], []
    for sample in samples:
        keys, is_image = _cache_keys(loaded, sample)
        image.append(keys[is_image])
        text.append(keys[~is_image])
    return torch.cat(image), torch.cat(text)


def _intervened_keys(loaded, sample, maps, strength):
    adapter, model = loaded.adapter, loaded.model
    inputs = adapter.model_inputs(loaded.processor, [sample])
    with Intervene(model, adapter, [LAYER], maps=maps, strength=strength, record=True) as hook:
        hook.forward(inputs)
        return hook.recorded[LAYER][1], hook.is_image[0]


@pytest.mark.parametrize("name", ["mean_shift", "coral", "random_shift", "attention_boost"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", TINY)
def test_strength_zero_is_the_unmodified_model(family, attention, name, cache_dir):
    from experiments.models import load_model

    cfg = tiny_model_config(family, cache_dir)
    if attention == "sdpa" and cfg.attn_implementation == "eager":
        pytest.skip(f"{family} runs eager attention only (PaliGemma 2's Gemma 2 soft-caps its logits; sdpa cannot)")
    cfg.attn_implementation = attention
    loaded = load_model(cfg)
    model, adapter = loaded.model, loaded.adapter
    calibration, held_out = _samples(3)[:2], _samples(3)[2]
    image, text = _calibration(loaded, calibration)
    maps = None if name == "attention_boost" else {LAYER: key_map(name, fit_statistics(image, text), 0.1)}
    inputs = adapter.model_inputs(loaded.processor, [held_out])
    with torch.inference_mode():
        reference = model(**inputs).logits
    with Intervene(model, adapter, [0, LAYER], maps=maps, strength=0.0,
                   boost=0.0 if name == "attention_boost" else None) as hook:
        logits = hook.forward(inputs).logits
    if name == "attention_boost" and attention == "sdpa":  # eager arithmetic against sdpa's kernel
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    else:
        assert torch.equal(logits, reference)
    with Intervene(model, adapter, [0, LAYER], maps=maps, strength=1.0,
                   boost=1.0 if name == "attention_boost" else None) as hook:
        assert not torch.allclose(hook.forward(inputs).logits, reference, atol=1e-4)  # it does act
    assert model.config.get_text_config()._attn_implementation == attention  # restored


@pytest.mark.parametrize("family", TINY)
def test_mean_shift_moves_image_keys_onto_the_calibration_text_mean(family, tiny_models):
    loaded = tiny_models[family]
    samples = _samples(6)
    calibration, held_out = samples[:3], samples[3:]
    image, text = _calibration(loaded, calibration)
    maps = {LAYER: key_map("mean_shift", fit_statistics(image, text))}
    gap = text.double().numpy().mean(0) - image.double().numpy().mean(0)  # [kv_heads, head_dim]
    before_image, after_image = [], []
    for sample in held_out:
        before, is_image = _cache_keys(loaded, sample)
        after, is_image_hook = _intervened_keys(loaded, sample, maps, 1.0)
        assert torch.equal(is_image, is_image_hook)
        torch.testing.assert_close(after[~is_image], before[~is_image], rtol=0, atol=0)  # text keys untouched
        before_image.append(before[is_image].double().numpy())
        after_image.append(after[is_image].double().numpy())
    moved = np.concatenate(after_image).mean(0) - np.concatenate(before_image).mean(0)
    np.testing.assert_allclose(moved, gap, atol=1e-5)
    # on the calibration samples the spec's statement holds literally: image mean = calibration text mean
    after = np.concatenate([_intervened_keys(loaded, s, maps, 1.0)[0][_cache_keys(loaded, s)[1]].double().numpy()
                            for s in calibration])
    np.testing.assert_allclose(after.mean(0), text.double().numpy().mean(0), atol=1e-5)


@pytest.mark.parametrize("family", TINY)
def test_coral_matches_the_calibration_covariance(family, tiny_models):
    loaded = tiny_models[family]
    calibration = _samples(5)
    image, text = _calibration(loaded, calibration)
    assert len(image) > 2 * image.shape[-1], "enough image keys for a full-rank covariance"
    maps = {LAYER: key_map("coral", fit_statistics(image, text), shrinkage=0.0)}
    mapped = np.concatenate([_intervened_keys(loaded, s, maps, 1.0)[0][_cache_keys(loaded, s)[1]].double().numpy()
                             for s in calibration])
    text64 = text.double().numpy()
    for head in range(text64.shape[1]):
        target = np.cov(text64[:, head], rowvar=False)
        got = np.cov(mapped[:, head], rowvar=False)
        scale = np.abs(target).max()
        np.testing.assert_allclose(got, target, atol=2e-4 * scale)
        np.testing.assert_allclose(mapped[:, head].mean(0), text64[:, head].mean(0), atol=1e-4 * np.sqrt(scale))


def _real_rows(tmp_path):
    """Three multiple-choice and one open MMMU row (Finance: has open questions), three MMBench-CN rows, with
    the option letters written from the raw rows (MMMU options list; MMBench A-D columns)."""
    import pandas as pd

    from tests.fixtures.mmbench_files import rows as mmbench_rows
    from tests.fixtures.mmbench_files import write_tsv

    mmmu = load_samples(BenchmarkConfig(name="mmmu", path=str(MMMU), split="validation", subjects=["Finance"],
                                        limit=None)).samples
    raw = pd.read_parquet(MMMU / "Finance" / "validation-00000-of-00001.parquet").set_index("id")
    choice = [s for s in mmmu if s.meta["question_type"] == "multiple-choice"][:3]
    open_ = [s for s in mmmu if s.meta["question_type"] == "open"][:1]
    letters = {s.id: "ABCDEFGHI"[:len(ast.literal_eval(raw.loc[s.id, "options"]))] for s in choice}
    tsv = write_tsv(tmp_path / "MMBench_DEV_CN.tsv")
    bench = load_samples(BenchmarkConfig(name="mmbench_cn", path=str(tsv), split="dev", limit=None)).samples[:3]
    by_index = {str(r["index"]): r for r in mmbench_rows()}
    letters |= {s.id: "".join(x for x in "ABCD" if by_index[s.id][x] is not None) for s in bench}
    return choice + open_, bench, letters


@pytest.mark.parametrize("family", ["tiny_llava", "tiny_qwen"])
def test_option_likelihood_accuracy_equals_manual_argmax_on_real_rows(family, cache_dir, tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import register_configs
    from experiments.interventions.stage import intervention_results
    from experiments.keys.layers import resolve_layers
    from experiments.models import decoder_depth, load_model

    mmmu, mmbench, letters = _real_rows(tmp_path)
    register_configs()
    for samples, benchmark in ((mmmu, "mmmu"), (mmbench, "mmbench_cn")):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"model={family}", f"benchmark={benchmark}", f"paths.cache_dir={cache_dir}", "intervention=mean_shift",
                "intervention.strength=0", "intervention.calibration_fraction=0.2", "layer.positions=[1]",
                "metric.n_bootstrap=50"])
        job = OmegaConf.to_object(cfg)
        layers = resolve_layers(job.layer.positions, job.layer.fractions, decoder_depth(job.model))
        loaded = load_model(job.model)
        rows, table, stored = intervention_results(job, samples, layers, loaded)
        tokenizer = loaded.processor.tokenizer
        answers = table[table["measure"] == "answer"].set_index("sample_id")
        held_out = [s for s in samples if s.id in set(stored["held_out_samples"])]
        correct = []
        for sample in held_out:
            if sample.meta.get("question_type") == "open":
                assert answers.loc[sample.id, "skip_reason"] == "open question"
                continue
            inputs = loaded.adapter.model_inputs(loaded.processor, [sample.decoded()])
            with torch.inference_mode():
                logits = loaded.model(**inputs).logits[0, -1].double()  # every position's logits, the last row
            scores = []
            for letter in letters[sample.id]:
                spellings = {tokenizer.encode(t, add_special_tokens=False)[0] for t in (letter, " " + letter)
                             if len(tokenizer.encode(t, add_special_tokens=False)) == 1}
                if (bare := tokenizer.convert_tokens_to_ids(letter)) not in (None, tokenizer.unk_token_id):
                    spellings.add(bare)
                scores.append(max(float(logits[i]) for i in spellings))
            manual = letters[sample.id][int(np.argmax(scores))]
            assert answers.loc[sample.id, "choice_unmodified"] == manual
            assert answers.loc[sample.id, "choice_intervened"] == manual  # strength 0
            correct.append(manual == sample.answer)
        accuracy = rows[rows["metric"] == "accuracy"]["value"].item()
        assert accuracy == pytest.approx(np.mean(correct))
        assert rows[rows["metric"] == "answer_change_rate"]["value"].item() == 0
        if benchmark == "mmmu":
            assert stored["skipped_for_accuracy"] == {"open": 1}


@pytest.mark.parametrize("name", ["mean_shift", "attention_boost"])
@pytest.mark.parametrize("family", TINY)
def test_image_share_equals_the_forwards_own_attention_weights(family, name, cache_dir):
    """The share the stage reports (chunked recomputation from the recorded q and intervened k, boost applied)
    equals the share summed from the attention weights the intervened eager forward returned."""
    from experiments.interventions.measure import image_share
    from experiments.models import load_model

    cfg = tiny_model_config(family, cache_dir)
    cfg.attn_implementation = "eager"
    loaded = load_model(cfg)
    model, adapter = loaded.model, loaded.adapter
    samples = _samples(3)
    image, text = _calibration(loaded, samples[:2])
    maps = None if name == "attention_boost" else {LAYER: key_map(name, fit_statistics(image, text))}
    boost = 0.7 if name == "attention_boost" else None
    inputs = adapter.model_inputs(loaded.processor, [samples[2]])
    with Intervene(model, adapter, [LAYER], maps=maps, strength=1.0, boost=boost, heads=[1], record=True) as hook:
        weights = hook.forward(inputs, output_attentions=True).attentions[LAYER][0].double()  # [heads, S, S]
        q, k = hook.recorded[LAYER]
        is_image = hook.is_image[0]
    eligible = ~is_image & (weights[:, :, is_image] > 0).any(-1).any(0)  # text queries that saw an image key
    assert eligible.any()
    oracle = weights[:, eligible][:, :, is_image].sum(-1).mean(-1).numpy()  # [heads]
    attention = adapter.attention_module(adapter.layers(model)[LAYER])
    got = image_share(q, k, is_image, float(attention.scaling), 2**20, boost, [1], hook.visible[LAYER],
                      getattr(attention, "attn_logit_softcapping", None))
    np.testing.assert_allclose(got, oracle, atol=1e-5)
