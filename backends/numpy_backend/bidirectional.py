"""The bidirectional form (spec 4.3): one whole-sequence frame, a state, then the outputs.

Every row sees every key, so one frame serves all of them: the global max M (E' >= 1,
nothing can underflow to 0/0) and s_ref = s_0. The state ``S = sum_i Kf_i^T v_i`` is summed
over slabs of tokens and read as ``out_t = Qf_t S``, both as products.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zeros_ref.kernel import State, unit

from .frames import inverse_norms

__all__ = ["bidirectional_rows"]


def _directions(x: np.ndarray, out: np.ndarray) -> None:
    """``out <- x / |x|`` row-wise (ZS-DEF-COSINE), x and out (R, L, D).

    Rows with a squared norm in range (`inverse_norms`) are scaled by 1/|x|; the others take
    the reference's `unit`.
    """
    inv, usable = inverse_norms(x)
    np.multiply(x, inv[..., None], out=out)
    if not usable.all():
        idx = np.nonzero(~usable)
        out[idx] = unit(np, x[idx])


def bidirectional_rows(q: np.ndarray, k: np.ndarray, v: np.ndarray, s: np.ndarray,
                       gates: tuple[np.ndarray, ...], out: np.ndarray, slab: int, *,
                       lengths: np.ndarray | None = None) -> None:
    """Whole-sequence state ``S = sum_i Kf_i^T v_i`` (3D, Dv), then ``out_t = Qf_t S``.

    Shapes: q, k (R, N, D); v, out (R, N, Dv); s and gates (R, N); `slab` tokens per
    product. The frame is the global max M (E >= 1, nothing can underflow to 0/0) and
    s_ref = s_0. Features and state are in `State`'s slot order F, G, H. With `lengths`
    (R,), row r holds only its first lengths[r] >= 1 tokens, and the rest is padding: zero
    keys and logits of -inf, whose outputs are not wanted (a packed call, `varlen`).
    """
    nrows, n, d = q.shape
    first, higher, zero = gates
    part_f, part_g, part_h = (slice(j * d, (j + 1) * d) for j in (State.F, State.G, State.H))
    top, ref = np.max(s, axis=1), s[:, 0]  # (R,)
    weights = np.exp(s - top[:, None])  # (R, N)
    centred = s - ref[:, None]  # (R, N)
    size: Any = n
    if lengths is not None:  # padding weighs nothing and leaves the mean out
        centred = np.where(np.arange(n) < lengths[:, None], centred, 0.0)
        size = lengths[:, None].astype(s.dtype)
    mean = np.sum(centred, axis=1, keepdims=True) / size  # (R, 1) sbar - s_ref
    a_prime = higher / np.sum(weights, axis=1)[:, None]  # a' = gh / E'
    b = (first - higher) / size
    c_prime = (zero - higher) / size - b * mean  # c' = (g0 - gh) / n - b (sbar - s_ref)
    state = np.zeros((nrows, 3 * d, v.shape[-1]), q.dtype)  # [F; G; H] in the frame
    feat = np.empty((nrows, min(slab, n), 3 * d), q.dtype)
    for p0 in range(0, n, slab):
        p1 = min(p0 + slab, n)
        f = feat[:, :p1 - p0]
        _directions(k[:, p0:p1], f[..., part_h])
        np.multiply(f[..., part_h], weights[:, p0:p1, None], out=f[..., part_f])
        np.multiply(f[..., part_h], centred[:, p0:p1, None], out=f[..., part_g])
        state += f.swapaxes(-1, -2) @ v[:, p0:p1]  # (R, 3D, L) @ (R, L, Dv)
    for p0 in range(0, n, slab):
        p1 = min(p0 + slab, n)
        f = feat[:, :p1 - p0]
        _directions(q[:, p0:p1], f[..., part_h])
        np.multiply(f[..., part_h], a_prime[:, p0:p1, None], out=f[..., part_f])
        np.multiply(f[..., part_h], b[:, p0:p1, None], out=f[..., part_g])
        np.multiply(f[..., part_h], c_prime[:, p0:p1, None], out=f[..., part_h])
        np.matmul(f, state, out=out[:, p0:p1])  # (R, L, 3D) @ (R, 3D, Dv)
