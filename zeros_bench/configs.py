"""The shapes `zeros-bench` times: named configurations of B*H, N, D, Dv, dtype and gates."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONFIGS", "DEFAULT_CONFIGS", "Config", "Shape"]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: bh = B*H rows, n tokens, d = D, dv = Dv, dtype name, and the gates:
    "default" (first = higher, where the first-order term vanishes) or "random" (per-step
    gates, all three unequal: the general case)."""

    bh: int
    n: int
    d: int = 64
    dv: int = 64
    dtype: str = "float32"
    gates: str = "default"


@dataclass(frozen=True)
class Config:
    """A named set of shapes timed together, and the decode contexts to time."""

    shapes: tuple[Shape, ...]
    decode: tuple[int, int] = (1024, 65536)
    repeats: int = 5


SWEEP = tuple(Shape(8, 512 * 2**i) for i in range(8))  # N = 512 ... 65536
CONFIGS: dict[str, Config] = {
    "bh8-n8192-d64": Config((Shape(8, 8192), Shape(8, 65536))),
    "bh8-n8192-d64-gates": Config((Shape(8, 8192, gates="random"),)),
    "sweep-bh8-d64": Config(SWEEP),
    "quick": Config((Shape(2, 128, 16, 16), Shape(2, 1024, 16, 16)), (128, 1024), repeats=2),
}
"""Named configurations. ``bh8-n8192-d64`` holds N = 8192 and its 8N for the scaling ratios;
``quick`` is a tiny run for tests (``--quick``)."""

DEFAULT_CONFIGS = ("bh8-n8192-d64", "bh8-n8192-d64-gates", "sweep-bh8-d64")
