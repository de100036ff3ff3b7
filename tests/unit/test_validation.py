"""Every field's declared valid values (`experiments.validation`), checked before anything loads.

Property-based over the whole schema: for every checked field, Hypothesis draws values outside its rule and
values at its extremes; a job with an invalid value fails with a `ConfigError` naming the field before the
benchmark loader or the model loader is called (both patched to raise), and a job with a valid extreme value
gets past the check to the benchmark loader.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from experiments import config, models, pipeline
from experiments.models.llava import LLAVA
from experiments.validation import Allowed, ConfigError, Each, LocalPath, Matches, Needs, OneOf, Range, Rule, rules

from ..conftest import REPO

RULES = rules(config.JobConfig)
WORD = st.text(st.characters(categories=("L", "N")) | st.sampled_from("-_. "), max_size=12)
HUB_MODEL = "llava-hf/llava-1.5-7b-hf"  # model.path that is valid whatever model.weights says


# a family whose mask the attention analysis does not model: analysis.attention=true is invalid with it
PREFIX_LLAVA = dataclasses.replace(LLAVA, family="prefix_llava", mask="prefix")


class Reached(Exception):
    """Raised by the patched loaders: the job got past the config check."""


@pytest.fixture(scope="module")
def base() -> Any:
    """The default job's composed config (tiny LLaVA on the synthetic benchmark)."""
    from hydra import compose, initialize_config_dir

    config.register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["paths.cache_dir=/tmp/keyspace-validation", "logger=none"])


@pytest.fixture(autouse=True)
def loaders_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.ADAPTERS, PREFIX_LLAVA.family, PREFIX_LLAVA)
    def reached(*args: Any, **kwargs: Any) -> Any:
        raise Reached

    monkeypatch.setattr(pipeline, "load_samples", reached)
    monkeypatch.setattr(pipeline, "load_model", reached)
    monkeypatch.setattr(pipeline.torch, "set_num_threads", lambda n: None)  # num_threads=10**6 passes the check


def _field_type(name: str) -> Any:
    """The annotated type of the dotted field `name`, without Optional (e.g. int, str, list[str])."""
    node: Any = config.JobConfig
    for part in name.split("."):
        hint = typing.get_type_hints(node)[part]
        node = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if _optional(hint) else hint
    return node


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _number(kind: Any, value: float) -> Any:
    return int(value) if kind is int else float(value) if kind is float else str(value)


def invalid(rule: Rule, kind: Any) -> st.SearchStrategy[Any]:
    """Values of type `kind` that break `rule` (for `Needs`: none given; `_job` sets its `when` field)."""
    if isinstance(rule, Range):
        outside = []
        if rule.low is not None:
            top = rule.low if rule.open_low else rule.low - (1 if kind is int or rule.integer else 1e-9)
            outside.append(st.integers(max_value=math.floor(top)) if kind is int or rule.integer
                           else st.floats(max_value=top, allow_nan=False))
        if rule.high is not None:
            bottom = rule.high if rule.open_high else rule.high + 1e-9
            outside.append(st.integers(min_value=math.ceil(bottom)) if kind is int else st.floats(min_value=bottom,
                                                                                                 allow_nan=False))
        numbers = st.one_of(outside).map(lambda v: _number(kind, v)).filter(lambda v: v not in rule.special)
        if kind is float:
            numbers |= st.sampled_from([math.nan, math.inf, -math.inf])
        if kind is str:
            numbers |= WORD.filter(lambda w: w not in rule.special and rule.problem(w, None) is not None)
        return numbers
    if isinstance(rule, OneOf):
        return WORD.filter(lambda w: w not in (rule.choices(None) if not rule.by else ("vlmevalkit",)))
    if isinstance(rule, Matches):
        return WORD.filter(lambda w: rule.problem(w, None) is not None)
    if isinstance(rule, LocalPath):
        return WORD.map(lambda w: f"/nonexistent/{w}")
    if isinstance(rule, Each):
        item = invalid(rule.rule, kind)
        bad = item.map(lambda v: {"early": v} if kind is dict else [v])
        if rule.nonempty:
            bad |= st.just([])
        if rule.distinct:
            bad |= st.just(["0", "0"] if kind is list else [])
        return bad
    if isinstance(rule, Allowed):  # analysis.attention: True on a family that is not causal (`_job` picks it)
        return st.just(True)
    assert isinstance(rule, Needs)
    return st.just({}) if kind is dict else st.none()


def extreme(rule: Rule, kind: Any) -> st.SearchStrategy[Any]:
    """Valid values of type `kind` at the edges of `rule` (bounds, the smallest or largest step inside them)."""
    if isinstance(rule, Range):
        edges: list[Any] = list(rule.special)
        if rule.low is not None:
            edges.append(rule.low + (1 if kind is int else 1e-6) * rule.open_low)
        if rule.high is not None:
            edges.append(rule.high - 1e-6 * rule.open_high)
        if rule.high is None:
            edges.append(10**6)
        return st.sampled_from([e if e in rule.special else str(int(e)) if rule.integer else _number(kind, e)
                                for e in edges])
    if isinstance(rule, OneOf):
        return st.sampled_from(rule.choices(None) if not rule.by else ["vlmevalkit"])
    if isinstance(rule, Matches):
        return st.from_regex(rule.pattern, fullmatch=True).filter(lambda t: t.isascii() and t.isprintable())
    if isinstance(rule, LocalPath):
        return st.sampled_from([tempfile.gettempdir(), HUB_MODEL])
    if isinstance(rule, Each):
        item = extreme(rule.rule, kind)
        if kind is dict:
            return st.dictionaries(st.sampled_from(["early", "middle", "late"]), item, min_size=1)
        return st.lists(item, min_size=1, max_size=3, unique=rule.distinct)
    if isinstance(rule, Allowed):  # both values on the default (causal) family
        return st.sampled_from([False, True])
    assert isinstance(rule, Needs)
    return extreme(rule.rule, kind) if rule.rule else st.just({"hidden_size": 8})


def _job(base: Any, name: str, value: Any, valid: bool) -> Any:
    cfg = copy.deepcopy(base)
    OmegaConf.update(cfg, "model.path", HUB_MODEL, merge=False)
    rule = RULES[name]
    if isinstance(rule, Needs) and not value:
        OmegaConf.update(cfg, rule.when, rule.equals, merge=False)
    if isinstance(rule, Allowed) and not valid:
        OmegaConf.update(cfg, "model.family", PREFIX_LLAVA.family, merge=False)
    OmegaConf.update(cfg, name, value, merge=False)
    return cfg


def _kind(name: str) -> Any:
    kind = _field_type(name)
    return typing.get_origin(kind) or kind


@pytest.mark.parametrize("name", list(RULES))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_invalid_value_fails_before_anything_loads_naming_the_field(base, tmp_path, name, data):
    value = data.draw(invalid(RULES[name], _kind(name)), label=name)
    with pytest.raises(ConfigError) as error:
        pipeline.run(_job(base, name, value, valid=False), tmp_path)
    assert f"{name}=" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", list(RULES))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_valid_extreme_value_gets_past_the_check(base, tmp_path, name, data):
    value = data.draw(extreme(RULES[name], _kind(name)), label=name)
    with pytest.raises(Reached):
        pipeline.run(_job(base, name, value, valid=True), tmp_path)


def test_every_constrained_field_of_every_group_has_a_rule():
    """The numbers and names a job cannot run without are all declared (a new field must not slip through)."""
    unchecked = {"model.name", "model.build_dir", "model.revision", "model.seed", "model.processor",
                 "model.fast_paths", "benchmark.revision", "benchmark.split", "benchmark.seed",
                 "benchmark.drop_circular", "keys.seed",
                 "analysis.seed", "analysis.exclude_sinks", "analysis.position_control",
                 "metric.unbiased", "report.seed", "intervention.seed", "logger.project", "logger.entity",
                 "paths.cache_dir", "paths.models", "paths.benchmarks"}  # site paths: checked where used (model.path)
    every = set(_leaves(config.JobConfig))
    assert every - set(RULES) == unchecked


def _leaves(schema: Any, prefix: str = "") -> list[str]:
    import dataclasses

    names = []
    for f in dataclasses.fields(schema):
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            names += _leaves(nested, f"{prefix}{f.name}.")
        else:
            names.append(f"{prefix}{f.name}")
    return names
