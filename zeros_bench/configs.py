"""The shapes `zeros-bench` times: named configurations of B*H, N, D, Dv, dtype and gates."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONFIGS", "DEFAULT_CONFIGS", "Config", "Shape"]


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
