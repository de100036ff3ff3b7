"""The sample type every benchmark loader yields and every model adapter consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One benchmark question with its images, in reading order.

    Attributes:
        id: stable id from the benchmark (row index, MMMU id, ...), written into the key cache.
        parts: the user turn as text and images interleaved in reading order; an adapter turns it into
            the model's chat content (images where the `<image>` slots of the template go).
        answer: the gold option letter, when the benchmark has one.
        meta: benchmark-specific fields kept for the report (category, subject, ...).
    """

    id: str
    parts: tuple[str | Image.Image, ...]
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]

    @property
    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))


@dataclass
class BenchmarkData:
    """What a loader returns: usable samples, and the rows it had to skip with the reason."""

    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"sample_id", "reason"}
