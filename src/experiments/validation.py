"""Valid values of the config fields, declared once beside each field of `config.py`, checked before anything loads.

A field declares its rule with `checked(default, rule)`; `check(node, prefix)` walks a config dataclass and
raises one `ConfigError` whose message gives, for every bad field, its dotted name, the value and what is
valid. `pipeline.run` checks the whole job before the benchmark or the model loads, and a multirun checks
every job of the sweep in the submitting process before anything is submitted (`callbacks.py`).

Enumerations whose members a registry defines (kernels, metrics, model families, ...) name that registry as
`"module:ATTRIBUTE"` instead of repeating its names, so each list of valid names is declared once, in the
code that uses it; `OneOf(by=...)` picks the registry entry of another field (prompt styles per benchmark).
`ConfigError` is the expected error of a bad value: entry points print its one line without a traceback.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import CompactHydraException

T = TypeVar("T")
RULE = "valid"  # key of a field's rule in its dataclass metadata
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # a Hugging Face repository id, owner/name


class ConfigError(ValueError, CompactHydraException):
    """A config value outside its valid range: expected, so reported in one line without a traceback.

    Hydra prints a `CompactHydraException` that ends a run or a sweep's job as its message alone, so no entry
    point needs to catch it (a sweep still fails on it, as launchers must see).
    """


@dataclass(frozen=True)
class Range:
    """A number in [low, high] (bounds optional, `open_*` excludes them), or one of `special` (e.g. "median", 0).

    Text fields that hold numbers (`kernel.bandwidth`, `metric.jsd_bins`) are parsed first; `integer` asks
    for a whole number. NaN and infinities are never in range.
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    special: tuple[Any, ...] = ()

    def problem(self, value: Any, job: Any) -> str | None:
        if value in self.special and not isinstance(value, bool):
            return None
        try:
            number = (int(value) if value.strip().isdecimal() else float(value)) if isinstance(value, str) else value
        except ValueError:
            number = None
        if (not isinstance(number, int | float) or isinstance(number, bool) or not math.isfinite(number)
                or (self.integer and not isinstance(number, int)) or not self.contains(number)):
            return self.describe(value)
        return None

    def contains(self, number: float) -> bool:
        low_ok = self.low is None or (number > self.low if self.open_low else number >= self.low)
        high_ok = self.high is None or (number < self.high if self.open_high else number <= self.high)
        return low_ok and high_ok

    def describe(self, value: Any) -> str:
        kind = "an integer" if self.integer or (isinstance(value, int) and not isinstance(value, bool)) else "a number"
        bounds = [f"{'>' if self.open_low else '>='} {self.low:g}" if self.low is not None else "",
                  f"{'<' if self.open_high else '<='} {self.high:g}" if self.high is not None else ""]
        text = f"{kind} {' and '.join(b for b in bounds if b)}".rstrip()
        return f"use {' or '.join([*(repr(s) for s in self.special), text])}"


@dataclass(frozen=True)
class OneOf:
    """One of `values`, or of the names in `registry` ("module:ATTRIBUTE": a dict's keys or a collection).

    With `by` (a dotted field such as "benchmark.name") the registry is a dict from that field's value to the
    valid names; a `by` value the dict lacks leaves the field unchecked (that field has its own rule).
    """

    values: tuple[str, ...] = ()
    registry: str | None = None
    by: str | None = None

    def choices(self, job: Any) -> list[str] | None:
        names: Collection[str] = self.values
        if self.registry:
            module, attribute = self.registry.split(":")
            names = getattr(importlib.import_module(module), attribute)
            if self.by:
                key = _select(job, self.by)
                if key not in names:
                    return None
                names = names[key]  # type: ignore[index]
        return [*self.values, *(n for n in names if n not in self.values)]

    def problem(self, value: Any, job: Any) -> str | None:
        choices = self.choices(job)
        if choices is None or value in choices:
            return None
        return f"use one of {', '.join(choices)}" + (f" (for {self.by}={_select(job, self.by)})" if self.by else "")


@dataclass(frozen=True)
class Matches:
    """Text matching `pattern` (a full match); `description` says what that is."""

    pattern: str
    description: str

    def problem(self, value: Any, job: Any) -> str | None:
        return None if re.fullmatch(self.pattern, str(value)) else f"use {self.description}"


@dataclass(frozen=True)
class LocalPath:
    """A path that exists on this machine, or (with `hub`) a Hugging Face repository id owner/name."""

    hub: bool = False

    def problem(self, value: Any, job: Any) -> str | None:
        if Path(str(value)).expanduser().exists():
            return None
        if self.hub and HUB_ID.match(str(value)) and not str(value).startswith((".", "~")):
            return None
        return "use an existing local path" + (" or a hub id owner/name" if self.hub else "")


@dataclass(frozen=True)
class Each:
    """`rule` on every item of a list (or every value of a dict), which may have to be non-empty and distinct."""

    rule: Rule
    nonempty: bool = False
    distinct: bool = False

    def problem(self, value: Any, job: Any) -> str | None:
        items = list(value.values() if isinstance(value, Mapping) else value)
        if self.nonempty and not items:
            return "give at least one item"
        if self.distinct and len({repr(i) for i in items}) != len(items):
            return "give each item once"
        for item in items:
            if problem := self.rule.problem(item, job):
                return f"{item!r} is not valid: {problem}"
        return None


@dataclass(frozen=True)
class Needs:
    """A value (not None, not empty) whenever field `when` equals `equals`; `rule`, if any, checks a given value."""

    when: str
    equals: Any
    fix: str
    rule: Rule | None = None

    def problem(self, value: Any, job: Any) -> str | None:
        if value is None or (isinstance(value, Collection) and not value):
            return f"{self.when}={self.equals} needs it: {self.fix}" if _select(job, self.when) == self.equals else None
        return self.rule.problem(value, job) if self.rule else None


@dataclass(frozen=True)
class Allowed:
    """A value that `check` ("module:function", called with the value and the whole job) finds no problem with:
    for rules that need a registry entry of another field (what a model family supports)."""

    check: str

    def problem(self, value: Any, job: Any) -> str | None:
        module, function = self.check.split(":")
        return getattr(importlib.import_module(module), function)(value, job)  # type: ignore[no-any-return]


Rule = Range | OneOf | Matches | LocalPath | Each | Needs | Allowed


def checked(default: T, rule: Rule) -> T:
    """A dataclass field with `default` (copied per instance when a list or dict) and its valid values `rule`."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=partial(copy.deepcopy, default), metadata={RULE: rule})
    return dataclasses.field(default=default, metadata={RULE: rule})


def rules(schema: type, prefix: str = "") -> dict[str, Rule]:
    """Dotted field name -> its rule, for every checked field of `schema` and of the dataclasses nested in it."""
    found: dict[str, Rule] = {}
    for f in dataclasses.fields(schema):
        name = f"{prefix}{f.name}"
        if RULE in f.metadata:
            found[name] = f.metadata[RULE]
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            found |= rules(nested, f"{name}.")
    return found


def problems(node: Any, prefix: str = "", job: Any = None) -> list[str]:
    """One line per bad field of the config dataclass `node` (fields named `prefix` + name): field=value: fix.

    `job` is the whole job config, for `OneOf(by=...)` rules (default: `node` itself).
    """
    job = node if job is None else job
    found = []
    for name, rule in rules(type(node), prefix).items():
        value = _select(node, name.removeprefix(prefix))
        if (value is not None or isinstance(rule, Needs)) and (problem := rule.problem(value, job)):
            found.append(f"{name}={value!r}: {problem}")
    return found


def check(node: Any, prefix: str = "", job: Any = None) -> None:
    """Raise `ConfigError` listing every bad field of `node` (see `problems`), all in one line."""
    if found := problems(node, prefix, job):
        raise ConfigError("; ".join(found))


def _select(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
