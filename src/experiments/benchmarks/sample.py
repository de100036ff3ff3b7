"""The sample type every benchmark loader yields and every model adapter consumes.

Loaders never decode pixels: a sample's images are `LazyImage`s that know their size and decode (or draw)
only in `load()`. Extraction calls `Sample.decoded()` per batch in its DataLoader workers, after the key
cache check, so peak memory follows the batch, not the benchmark. A row the loader or the decode cannot use
raises `SkipRow`, whose message becomes the reason in a `skipped` entry.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from PIL import Image


class SkipRow(ValueError):
    """A row the loader cannot use; the message is the reason written into `BenchmarkData.skipped`."""


@dataclass(frozen=True, eq=False)
class LazyImage:
    """An image whose pixels are produced only by `load()`; small and picklable, so it travels to workers.

    Attributes:
        size: (width, height) in pixels, known without decoding.
        source: `() -> PIL image` that decodes or draws the pixels; picklable (a module-level function, a
            bound method of a picklable object, or a `functools.partial` of either).
    """

    size: tuple[int, int]
    source: Callable[[], Image.Image] = field(repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> LazyImage:
        """Encoded image bytes, kept as they are; only the header is read here, for the size.

        Raises:
            SkipRow: PIL cannot identify the bytes as an image, or the image has more pixels than PIL's
                decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), so decoding it could exhaust memory.
        """
        try:
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
        except Image.DecompressionBombError as err:
            raise SkipRow(f"decompression bomb ({err})") from None
        except Exception as err:  # PIL raises UnidentifiedImageError, SyntaxError, struct.error ... on bad headers
            raise SkipRow(f"corrupt image bytes ({type(err).__name__}: {err})") from None
        limit = Image.MAX_IMAGE_PIXELS
        if limit and size[0] * size[1] > limit:
            raise SkipRow(f"decompression bomb: {size[0]} x {size[1]} = {size[0] * size[1]} pixels, over PIL's "
                          f"limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS)")
        return cls(size, partial(_decode, data))

    def load(self) -> Image.Image:
        """The full pixels, any non-RGB mode (RGBA, P, LA, L, CMYK) converted to RGB.

        RGBA is converted without compositing over a background, as VLMEvalKit (`vlmeval/smp/vlm.py:156-171`,
        `decode_base64_to_image`) and lmms-eval (`.convert("RGB")`) do.

        Raises:
            SkipRow: the pixels cannot be decoded (truncated or corrupt data).
        """
        image = self.source()
        return image if image.mode == "RGB" else image.convert("RGB")


def _decode(data: bytes) -> Image.Image:
    """Decode image bytes fully; a failure raises `SkipRow` with PIL's reason."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on corrupt bytes
        raise SkipRow(f"corrupt image bytes ({type(err).__name__}: {err})") from None
    return image


@dataclass(frozen=True)
class Sample:
    """One benchmark question with its images, in reading order.

    Attributes:
        id: stable id from the benchmark (row index, MMMU id, ...), written into the key cache.
        parts: the user turn as text and images interleaved in reading order; an adapter turns it into
            the model's chat content (images where the `<image>` slots of the template go). Loaders put
            `LazyImage`s here; `decoded()` swaps them for PIL images.
        answer: the gold option letter, when the benchmark has one.
        meta: benchmark-specific fields kept for the report (category, subject, ...).
    """

    id: str
    parts: tuple[str | LazyImage | Image.Image, ...]
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[LazyImage | Image.Image]:
        """The image parts in reading order; each has `size` (width, height) either way."""
        return [p for p in self.parts if not isinstance(p, str)]

    @property
    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))

    def decoded(self) -> Sample:
        """A copy whose images are decoded PIL images (ones already decoded are kept as they are).

        Raises:
            SkipRow: an image cannot be decoded; the message names it (`image k of n`) and the reason.
        """
        parts: list[str | LazyImage | Image.Image] = []
        for part in self.parts:
            if isinstance(part, LazyImage):
                try:
                    part = part.load()
                except SkipRow as err:
                    rank = sum(not isinstance(p, str) for p in parts) + 1
                    raise SkipRow(f"image {rank} of {len(self.images)}: {err}") from None
            parts.append(part)
        return replace(self, parts=tuple(parts))


@dataclass
class BenchmarkData:
    """What a loader returns: usable samples, and the rows it had to skip with the reason."""

    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"sample_id", "reason"}
    commit: str | None = None  # hub commit of the dataset snapshot read; None for local files and synthetic
