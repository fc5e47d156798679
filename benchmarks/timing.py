"""Repeated wall-clock measurements: median, min and max of the samples."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Failure", "Stopwatch", "Timing", "measure"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Seconds of each repetition of one measurement."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)

    def __add__(self, other: Timing) -> Timing:
        """Sample-wise sum of two measurements taken in the same repetitions."""
        return Timing(samples=tuple(a + b for a, b in zip(self.samples, other.samples, strict=True)))

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"median": self.median, "min": self.min, "max": self.max, "n": self.n}
        if samples:
            data["samples"] = list(self.samples)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timing:
        return cls(samples=tuple(float(s) for s in data["samples"]))


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A measurement that could not be taken, and why (one line, no data values)."""

    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error}


def measure(fn: Callable[[], T], *, reps: int, warmup: int = 0) -> tuple[Timing, T]:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times timed; return the
    timing and the last result."""
    result: Any = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return Timing(samples=tuple(samples)), result


@dataclass
class Stopwatch:
    """Elapsed time since the run started, for progress lines."""

    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", flush=True)
