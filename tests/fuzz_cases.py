"""Drawn cases for the differential fuzz tests (`test_fuzz.py`), and an explicit definition.

A case is one attention call: q, k, v, logits and gates as float64 numpy arrays (gates may be
floats) whose values are representable in the tested dtype, so the backend sees exactly them,
in causal or bidirectional mode, with cut positions for a streamed run. Hypothesis draws the
structure (leading axes, N, D, Dv, modes, gate kinds, magnitudes) and a seed; the seed fills
the arrays with NumPy, so a case shrinks by its structure and prints in a few lines.

Magnitudes follow ZS-STAB-MAGNITUDE (spec 6) for a dtype with smallest normal `tiny`, largest
finite `big` and epsilon `eps`, H = big eps, L = tiny / eps, S the largest spread
(max s - min s) of the logits of a sequence:

- each of q, k, v and the explicit logits takes one decade, applied to every row, to a random
  third of the rows or to one row at a random position (the other rows keep magnitude 1);
- q and k rows: norms from tiny to big / 100; with default logits, keys only up to
  sqrt(big) / D;
- explicit logits: |s| <= H, nonzero ones >= L (a drawn offset may move them all);
- gates (floats or per-step arrays, with 0, +-1e4, tiny and negative entries) are scaled by
  one factor, or where one cannot do it row by row, and v is drawn last, so that the largest
  |gate| and the largest |v| lie in [L, H / (1 + S)] and every row's output scale (spec 7.1)
  in [L, H].

Three more conditions keep out what no implementation in the dtype can meet, gaps of the
rule in spec 0.3 (each showed up as a failure of every backend, the reference included):

- `_coefficient_floor`: a row's gate factor G_t = |gh| + |g1 - gh| spread_t + |g0 - gh| is
  large enough that the coefficients (g1 - gh) / n_t and (g0 - gh) / n_t are not rounded to
  the compute dtype's subnormals (gates of 1e-43 in float32);
- `_sum_floor`: max |v| of a row is large enough that the terms of the sums F, G, H, rounded
  to subnormals, stay below the tolerance once the coefficients multiply them (logits of
  spread 1e-37 with gates of 1e11 in float32);
- `well_conditioned`: with default logits, computing them in the compute dtype (as spec 3
  says) moves the float64 definition by at most a quarter of the tolerance (keys whose sum
  cancels, or whose squared norms underflow).

A draw that cannot meet all of these after rounding is rejected with `hypothesis.assume`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from conftest import round_to
from hypothesis import assume
from hypothesis import strategies as st

import zeros_ref
from zeros_conformance import TOLERANCE, compare, output_scale

__all__ = ["GATES", "RANGES", "FuzzCase", "Range", "definition", "fuzz_cases", "unit"]

GATES = ("first", "higher", "zero")
PATTERNS = ("none", "all", "some", "one")
MARGIN = 0.02
"""Decades kept clear of each bound before rounding (the draw is checked exactly after it)."""


@dataclass(frozen=True)
class Range:
    """The numbers of a dtype: smallest normal, largest finite, epsilon, compute dtype."""

    dtype: str
    tiny: float
    big: float
    eps: float
    compute: str

    @property
    def low(self) -> float:
        """log10(tiny / eps): the smallest output scale a row may have."""
        return float(np.log10(self.tiny / self.eps))

    @property
    def high(self) -> float:
        """log10(big * eps): the largest output scale, logit and (1 + S) |gate| or |v|."""
        return float(np.log10(self.big * self.eps))


def _range(dtype: str, compute: str) -> Range:
    info = np.finfo(np.float32 if dtype == "bfloat16" else dtype)
    eps = 2.0**-7 if dtype == "bfloat16" else float(info.eps)
    big = 3.3895313892515355e38 if dtype == "bfloat16" else float(info.max)
    return Range(dtype, float(info.smallest_normal), big, eps, compute)


RANGES = {
    "float16": _range("float16", "float32"),
    "bfloat16": _range("bfloat16", "float32"),
    "float32": _range("float32", "float32"),
    "float64": _range("float64", "float64"),
}


@dataclass
class FuzzCase:
    """One drawn call; arrays are float64 holding values of `dtype` exactly."""

    dtype: str
    causal: bool
    q: np.ndarray  # (*Bq, N, D)
    k: np.ndarray  # (*Bk, N, D)
    v: np.ndarray  # (*Bv, N, Dv)
    logits: np.ndarray | None  # (*Bs, N) or None (default logits)
    gates: dict[str, Any]  # name -> float or (*Bg, N) array
    cuts: tuple[int, ...] = ()  # piece bounds of a streamed run, 0 ... N
    record: dict[str, str] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments of `attention` besides `causal`."""
        return {"logits": self.logits, **self.gates}

    def describe(self) -> str:
        """The case in a few lines, for notes and assertion messages."""
        shapes = ", ".join(f"{name} {np.shape(x)}" for name, x in
                           (("q", self.q), ("k", self.k), ("v", self.v)))
        shapes += f", logits {'default' if self.logits is None else self.logits.shape}"
        gates = ", ".join(f"{name}={g!r}" if isinstance(g, float) else f"{name}{g.shape}"
                          for name, g in self.gates.items())
        drawn = "; ".join(f"{name}: {text}" for name, text in self.record.items())
        return (f"{self.dtype} {'causal' if self.causal else 'bidirectional'}: {shapes}; "
                f"gates {gates}; cuts {self.cuts}\n  {drawn}")


# -- the explicit definition ----------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    """Directions of the rows of float64 `x` (..., D) for any finite scale; zero rows stay 0.

    Every row is divided by its largest magnitude first, so its squared norm lies in [1, D].
    """
    peak = np.max(np.abs(x), axis=-1, keepdims=True)  # (..., 1)
    y = x / np.where(peak > 0, peak, 1.0)
    norm = np.sqrt(np.sum(y * y, axis=-1, keepdims=True))
    return y / np.where(norm > 0, norm, 1.0)


def definition(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, logits: np.ndarray | None,
               first: Any, higher: Any, zero: Any, causal: bool) -> np.ndarray:
    """The O(N^2) definition of spec section 2 in float64, written for inputs of any magnitude.

    Row t's logits are taken relative to its own max m_t, so that p, the mean and f keep the
    precision of the row's spread whatever the logits' offset, and r is formed as
    ``gh p + (g1 - gh) f + (g0 - gh) / n`` (each term bounded by the output scale):

        p[t,i] = exp(s_i - m_t) / sum_j exp(s_j - m_t),  f[t,i] = ((s_i - m_t) - mean_j) / n
        out_t = sum_i r[t,i] <qh_t, kh_i> v_i  over the visible keys i

    Shapes: q, k (*B, N, D); v (*B, N, Dv); logits (*B, N) or None (ZS-LOG-DEFAULT, computed
    here from the raw keys); gates floats or (*B, N). Returns (*B, N, Dv).
    """
    n, d = q.shape[-2], q.shape[-1]
    if logits is None:
        count = np.arange(1, n + 1, dtype=np.float64) + 1.0  # tau + i, tau = 1
        mean = np.cumsum(k, axis=-2) / count[:, None] if causal else (
            np.sum(k, axis=-2, keepdims=True) / (n + 1.0))
        logits = -np.sum(k * mean, axis=-1) / np.sqrt(d)  # (*B, N)
    index = np.arange(n)
    visible = index[None, :] <= index[:, None] if causal else np.ones((n, n), dtype=bool)
    count = visible.sum(axis=-1).astype(np.float64)  # (N,) n_t
    s = np.asarray(logits, dtype=np.float64)[..., None, :]  # (*B, 1, N)
    top = np.max(np.where(visible, s, -np.inf), axis=-1, keepdims=True,
                 initial=-np.inf)  # (*B, N, 1) m_t
    rel = np.where(visible, s - top, 0.0)  # (*B, N, N) s_i - m_t
    e = np.where(visible, np.exp(rel), 0.0)
    p = e / np.sum(e, axis=-1, keepdims=True)
    centred = rel - np.sum(rel, axis=-1, keepdims=True) / count[:, None]
    f = np.where(visible, centred / count[:, None], 0.0)
    g1, gh, g0 = (np.asarray(g, dtype=np.float64)[..., None] for g in (first, higher, zero))
    r = gh * p + (g1 - gh) * f + np.where(visible, (g0 - gh) / count[:, None], 0.0)
    cosine = unit(q) @ np.swapaxes(unit(k), -1, -2)  # (*B, N, N)
    return (r * cosine) @ v


# -- drawing ---------------------------------------------------------------------------------


def _rows(rng: np.random.Generator, n: int, pattern: str) -> np.ndarray:
    """Which of n rows take the drawn magnitude: (n,) bool."""
    if pattern == "all":
        return np.ones(n, dtype=bool)
    if pattern == "some":
        return rng.uniform(size=n) < 1 / 3
    if pattern == "one" and n:
        return np.arange(n) == rng.integers(n)
    return np.zeros(n, dtype=bool)


def _magnitude(draw: Any, lo: float, hi: float) -> tuple[str, float]:
    """A pattern and a decade in [lo, hi] (shrinking towards 0, magnitude 1, where inside)."""
    pattern = draw(st.sampled_from(PATTERNS))
    decade = draw(st.floats(lo, hi)) if pattern != "none" else 0.0
    return pattern, decade


def _vectors(rng: np.random.Generator, shape: tuple[int, ...], decades: np.ndarray,
             zero_rows: float, *, exact: bool) -> np.ndarray:
    """Normal rows times 10**decade (decades (N,)), some of them zero: (*shape) float64.

    exact: rows of ∞-norm exactly 10**decade (else their entries are normal numbers times
    it, so that even D = 1 does not make all keys of a decade equal up to their sign).
    """
    x = rng.normal(size=shape)
    if exact:
        peak = np.max(np.abs(x), axis=-1, keepdims=True)
        x = x / np.where(peak > 0, peak, 1.0)
    x = x * 10.0 ** decades[:, None]
    return np.where(rng.uniform(size=(*shape[:-1], 1)) < zero_rows, 0.0, x)


def _leading(draw: Any, batch: tuple[int, ...]) -> tuple[int, ...]:
    """`batch` or a form of it that broadcasts to it."""
    forms = {batch, tuple(1 for _ in batch), batch[1:], batch[:1] + (1,) * (len(batch) - 1)}
    return draw(st.sampled_from(sorted(forms, key=lambda f: (len(f), f))))


def _gate(draw: Any, rng: np.random.Generator, shape: tuple[int, ...], r: Range) -> Any:
    """A float or a per-step array with some extreme entries."""
    specials = [0.0, 1e4, -1e4, r.tiny, -r.tiny, 1e-3]
    if draw(st.booleans()):
        return draw(st.sampled_from([1.0, 0.0, -1.0, 0.5, 1 / 3, *specials[1:4]]))
    x = rng.uniform(-1.5, 1.5, size=shape)
    extreme = rng.uniform(size=shape) < draw(st.sampled_from([0.0, 0.1, 0.5]))
    return np.where(extreme, rng.choice(specials, size=shape), x)


def _logits(draw: Any, rng: np.random.Generator, shape: tuple[int, ...], r: Range,
            record: dict[str, str]) -> np.ndarray:
    """Explicit logits |s| <= H: N(0, sigma), a magnitude pattern, an offset."""
    sigma = draw(st.sampled_from([1.0, 0.0, 3.0]))
    s = rng.normal(scale=sigma, size=shape)
    pattern, decade = _magnitude(draw, r.low + MARGIN, r.high - MARGIN)
    rows = _rows(rng, shape[-1], pattern)
    s = np.where(rows, rng.uniform(-1, 1, size=shape) * 10.0**decade, s)
    room = r.big * r.eps * (1 - 1e-3) - np.max(np.abs(s), initial=0.0)
    offset = draw(st.sampled_from([0.0, 1.0, -1.0])) * room ** draw(st.floats(0, 1))
    record["logits"] = (f"N(0, {sigma}), {pattern} at 1e{decade:.1f}, offset {offset:.3g}")
    return round_to(s + offset, r.dtype)


def _gate_factor(batch: tuple[int, ...], s: np.ndarray, gates: dict[str, Any],
                 causal: bool) -> np.ndarray:
    """G_t of every row, (*B, N): the output scale (spec 7.1) for values of ∞-norm 1."""
    ones = np.ones((*batch, s.shape[-1], 1))
    g = [np.asarray(gates[name], dtype=np.float64) for name in GATES]
    return output_scale(ones, s, *g, causal=causal)


def _fit_gates(draw: Any, gates: dict[str, Any], factor: np.ndarray, cap: float,
               band: tuple[float, float, float]) -> tuple[dict[str, Any], str]:
    """Gates scaled so that |gate| <= cap and every positive G_t lies in [T - w, T].

    band: (lowest T, highest T, w) in decades. One factor where it suffices (floats stay
    floats), else one per row (the gates become (*B, N) arrays).
    """
    t_lo, t_hi, width = band
    shape = factor.shape
    size = np.max([np.abs(np.broadcast_to(gates[g], shape)) for g in GATES], axis=0)  # (*B, N)
    with np.errstate(divide="ignore"):
        log_g, room = np.log10(factor), np.log10(cap) - np.log10(size)  # (*B, N)
    live = factor > 0
    if not live.any():
        shift = min(0.0, float(np.min(room, initial=np.inf)))
        return {g: _times(gates[g], shift) for g in GATES}, f"all times 1e{shift:.1f}"
    t_hi = min(t_hi, float(np.min(log_g[live] + room[live])) + width)
    assume(t_lo <= t_hi)
    top = t_lo + draw(st.floats(0, 1)) * (t_hi - t_lo)
    shift = top - float(np.max(log_g[live]))
    with np.errstate(invalid="ignore"):
        target = np.minimum(np.clip(log_g + shift, top - width, top), log_g + room)
        lam = np.where(live, target - np.where(live, log_g, 0.0), np.minimum(shift, room))
    lam = np.where(size > 0, lam, shift)  # rows whose gates are all 0 take any factor
    if np.ptp(lam) < 1e-9:
        one = float(lam.flat[0])
        return {g: _times(gates[g], one) for g in GATES}, f"all times 1e{one:.1f}"
    scaled = {g: _times(np.broadcast_to(gates[g], shape), lam) for g in GATES}
    return scaled, f"per row times 1e{lam.min():.1f} .. 1e{lam.max():.1f}"


def _times(x: Any, decades: Any) -> Any:
    """x * 10**decades for results in range where 10**decades alone is not (|decades| > 308)."""
    half = 10.0 ** (np.asarray(decades) / 2)
    y = x * half * half
    return float(y) if isinstance(x, float) else y


@st.composite
def fuzz_cases(draw: Any, dtypes: tuple[str, ...], *, bidirectional: bool = True,
               default_logits: bool = True, max_n: int = 300, max_d: int = 20) -> FuzzCase:
    """A `FuzzCase` in one of `dtypes` (module docstring), modes as the flags allow."""
    dtype = draw(st.sampled_from(dtypes))
    r = RANGES[dtype]
    causal = draw(st.booleans()) if bidirectional else True
    batch = draw(st.sampled_from([(), (2,), (2, 3)]))
    n = draw(st.integers(0, max_n))
    d, dv = draw(st.integers(1, max_d)), draw(st.integers(1, max_d))
    explicit = draw(st.booleans()) if default_logits else True
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    record = {"seed": str(seed)}
    zero_rows = draw(st.sampled_from([0.0, 0.0, 0.1]))

    # q and k: directions of any norm (ZS-DEF-COSINE), keys bounded for the default logits.
    arrays = {}
    for name in ("q", "k"):
        lo, hi = np.log10(r.tiny), np.log10(r.big) - 2
        if name == "k" and not explicit:
            hi = np.log10(np.sqrt(r.big) / d) - np.log10(d) / 2 - 0.7
        pattern, decade = _magnitude(draw, lo + MARGIN, hi - MARGIN)
        lead = batch if name == "q" else _leading(draw, batch)
        decades = np.where(_rows(rng, n, pattern), decade, 0.0)
        arrays[name] = round_to(_vectors(rng, (*lead, n, d), decades, zero_rows, exact=False),
                                dtype)
        record[name] = f"{lead}, {pattern} at 1e{decade:.1f}"
    logits = _logits(draw, rng, (*_leading(draw, batch), n), r, record) if explicit else None
    s = logits if explicit else zeros_ref.deviation_logits(arrays["k"], causal=causal)
    spread = float(np.max(np.ptp(s, axis=-1), initial=0.0)) if n else 0.0
    assume(np.isfinite(spread) and np.log10(1 + spread) < r.high - r.low - 3 * MARGIN)
    cap = r.big * r.eps / (1 + spread) * 10.0**-MARGIN  # |gate| and max |v|

    # Gates: floats or arrays, scaled to the band that v can serve (v in [L, cap]).
    gates = {}
    for name in GATES:
        gates[name] = _gate(draw, rng, (*_leading(draw, batch), n), r)
    if draw(st.booleans()):
        gates["higher"] = gates["first"]  # first == higher: a level block
    v_lo, v_hi = r.low + MARGIN, np.log10(cap)
    lo, hi = r.low + MARGIN, r.high - MARGIN
    floor = max(lo - v_hi, np.log10(3 * r.tiny / r.eps * (1 + spread)),
                np.log10(_coefficient_floor(r, n, spread))) + MARGIN
    width = 0.6 * (hi - lo)
    factor = _gate_factor(batch, s, gates, causal)
    gates, gate_note = _fit_gates(draw, gates, factor, cap, (floor + width, hi - v_lo, width))
    gates = {g: float(round_to(np.asarray(x), dtype)) if isinstance(x, float)
             else round_to(x, dtype) for g, x in gates.items()}
    factor = _gate_factor(batch, s, gates, causal)
    live = factor > 0
    g_lo = float(np.log10(factor[live].min())) if live.any() else 0.0
    g_hi = float(np.log10(factor[live].max())) if live.any() else 0.0
    record["gates"] = gate_note

    # v last: every decade within what every row's scale allows (and its sums need).
    sums = float(np.max(_sum_floor(r, gates, factor, causal), initial=0.0))
    v_min = max(v_lo, lo - g_lo, np.log10(sums) if sums > 0 else lo)
    v_max = min(v_hi - MARGIN, hi - g_hi)
    assume(v_min + MARGIN <= v_max)
    pattern = draw(st.sampled_from(PATTERNS[1:]))
    base, special = (v_min + MARGIN + draw(st.floats(0, 1)) * (v_max - v_min - MARGIN)
                     for _ in range(2))
    decades = np.where(_rows(rng, n, pattern), special, base)
    lead = _leading(draw, batch)
    v = round_to(_vectors(rng, (*lead, n, dv), decades, zero_rows, exact=True), dtype)
    record["v"] = f"{lead}, 1e{base:.1f} with {pattern} at 1e{special:.1f}"
    case = FuzzCase(dtype, causal, arrays["q"], arrays["k"], v, logits, gates,
                    _cuts(draw, n), record)
    assume(follows_rule(case, s))
    assume(explicit or well_conditioned(case, s))
    return case


def _visible_counts(n: int, causal: bool) -> np.ndarray:
    """n_t of every row, (N,)."""
    return np.arange(1.0, n + 1) if causal else np.full(n, float(n))


def _coefficient_floor(r: Range, n: Any, spread: Any) -> Any:
    """Least gate factor G_t whose coefficients b_t, c_t (gate differences over n_t) keep the
    tolerance: each is rounded to a multiple of the compute dtype's smallest subnormal u, an
    error that the sums (up to n_t (1 + spread) |v|) carry into the output."""
    c = RANGES[r.compute]
    return 16 * np.maximum(n, 1) * (1 + spread) * c.tiny * c.eps / TOLERANCE[r.dtype]


def _sum_floor(r: Range, gates: dict[str, Any], factor: np.ndarray,
               causal: bool) -> np.ndarray:
    """Least max |v| of every row (*B, N) whose sums F, G, H keep the tolerance: their terms
    are rounded to multiples of u, which the coefficients (up to |gh| + |g1 - gh| + |g0 - gh|
    over n_t) carry into the output. 0 where the row's scale is 0."""
    c = RANGES[r.compute]
    g1, gh, g0 = (np.asarray(gates[g], dtype=np.float64) for g in GATES)
    size = np.abs(gh) + np.abs(g1 - gh) + np.abs(g0 - gh)
    n = _visible_counts(factor.shape[-1], causal)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = 8 * size * n * c.tiny * c.eps / (TOLERANCE[r.dtype] * factor)
    return np.where(factor > 0, need, 0.0)


def well_conditioned(case: FuzzCase, s: np.ndarray) -> bool:
    """Whether the default logits computed in the compute dtype (as spec 3 has it) move the
    float64 definition by at most a quarter of the dtype's tolerance.

    Keys whose sum cancels or whose squared norms underflow in the compute dtype give logits
    that no implementation computes to the float64 definition's accuracy: not a fault of the
    backend under test, so such draws are left out.
    """
    compute = RANGES[case.dtype].compute
    if compute == "float64" or s.shape[-1] == 0:
        return True
    rounded = zeros_ref.deviation_logits(case.k.astype(compute), causal=case.causal)
    rounded = rounded.astype(np.float64)
    if not np.all(np.isfinite(rounded)):
        return False
    args = (case.q, case.k, case.v)
    exact = definition(*args, causal=case.causal, logits=s, **case.gates)
    moved = definition(*args, causal=case.causal, logits=rounded, **case.gates)
    gates = [np.asarray(case.gates[g], dtype=np.float64) for g in GATES]
    scale = output_scale(case.v, s, *gates, causal=case.causal)
    return compare(moved, exact, scale, TOLERANCE[case.dtype] / 4).passed


def _cuts(draw: Any, n: int) -> tuple[int, ...]:
    """0, one or two cut positions in [0, N] (empty pieces included), N."""
    inner = draw(st.lists(st.integers(0, n), min_size=1, max_size=2))
    return (0, *sorted(inner), n)


def follows_rule(case: FuzzCase, s: np.ndarray) -> bool:
    """Whether the rounded case keeps the bounds of ZS-STAB-MAGNITUDE and the two floors that
    the O(N) form's intermediates need (`_coefficient_floor`, `_sum_floor`)."""
    r = RANGES[case.dtype]
    if s.shape[-1] == 0:
        return True
    h, low = r.big * r.eps, r.tiny / r.eps
    arrays = [case.q, case.k, case.v, s, *(np.asarray(g) for g in case.gates.values())]
    if not all(np.all(np.isfinite(x)) for x in arrays):
        return False
    spread = float(np.max(np.ptp(s, axis=-1)))
    gate = max(float(np.max(np.abs(g), initial=0.0)) for g in case.gates.values())
    value = float(np.max(np.abs(case.v)))
    if not all(x == 0 or low <= x <= h / (1 + spread) for x in (gate, value)):
        return False
    if case.logits is not None and np.max(np.abs(case.logits)) > h:
        return False
    gates = [np.asarray(case.gates[g], dtype=np.float64) for g in GATES]
    scale = output_scale(case.v, s, *gates, causal=case.causal)
    factor = _gate_factor(scale.shape[:-1], s, case.gates, case.causal)
    live = scale > 0
    n = _visible_counts(s.shape[-1], case.causal)
    spreads = output_scale(np.ones((*s.shape, 1)), s, 0.0, 1.0, 1.0, causal=case.causal) - 1
    coefficients = np.broadcast_to(_coefficient_floor(r, n, spreads), factor.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = scale / factor  # max |v| of each row
    sums = _sum_floor(r, case.gates, factor, case.causal)
    return bool(np.all((scale[live] >= low) & (scale[live] <= h))
                and np.all(factor[live] >= coefficients[live])
                and np.all(sums[live] <= values[live] * 1.0001))
