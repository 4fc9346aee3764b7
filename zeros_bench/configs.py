"""The shapes `zeros-bench` times: named configurations of B*H, N, D, Dv, dtype and gates, and
the packed batches of ``--varlen``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CONFIGS", "DEFAULT_CONFIGS", "PACKED", "Config", "Packed", "Shape"]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: bh = B*H rows, n tokens, d = D, dv = Dv, dtype name, the gates
    ("default": first = higher, where the first-order term vanishes; "random": per-step gates,
    all three unequal, the general case) and the mode (causal or bidirectional)."""

    bh: int
    n: int
    d: int = 64
    dv: int = 64
    dtype: str = "float32"
    gates: str = "default"
    causal: bool = True

    @classmethod
    def parse(cls, text: str, **options: object) -> Shape:
        """A shape from ``"BH,N,D"`` or ``"BH,N,D,Dv"`` (Dv = D when absent); `ValueError`
        saying what is wrong otherwise."""
        parts = text.split(",")
        if len(parts) not in (3, 4) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"a shape is BH,N,D or BH,N,D,Dv with positive integers; got "
                             f"{text!r}")
        bh, n, d, *dv = (int(p) for p in parts)
        if min(bh, n, d, *dv) < 1:
            raise ValueError(f"every size of a shape must be >= 1; got {text!r}")
        return cls(bh, n, d, dv[0] if dv else d, **options)


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


GIB = 2**30


@dataclass(frozen=True)
class Packed:
    """A packed batch for ``--varlen`` (spec 5.2): bh = B*H rows of t tokens each, cut into
    sequences of `min_len` to `max_len` tokens drawn with `seed` (the last one takes what is
    left), d = D, dv = Dv, the dtype name and the mode. The padded call (every sequence
    padded to the longest) is skipped when its inputs would take more than `budget_bytes`."""

    bh: int = 8
    t: int = 65536
    max_len: int = 4096
    d: int = 64
    dv: int = 64
    dtype: str = "float32"
    causal: bool = True
    min_len: int = 1
    seed: int = 0
    repeats: int = 5
    budget_bytes: int = 2 * GIB

    def lengths(self) -> list[int]:
        """The sequence lengths, uniform in ``min_len .. max_len``, summing to t."""
        rng = np.random.default_rng(self.seed)
        lengths: list[int] = []
        total = 0
        while total < self.t:
            length = min(int(rng.integers(self.min_len, self.max_len + 1)), self.t - total)
            lengths.append(length)
            total += length
        return lengths


PACKED: dict[str, Packed] = {
    "full": Packed(),
    "quick": Packed(bh=2, t=4096, max_len=512, d=16, dv=16, repeats=2),
}
"""The packed batches of ``--varlen``: ``full`` (B*H = 8, T = 65536 tokens in sequences of 1
to 4096, D = Dv = 64) and ``quick`` (with ``--quick``)."""
