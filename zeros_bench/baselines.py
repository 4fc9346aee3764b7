"""What the backend is timed against: softmax attention (torch SDPA or NumPy)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["blocked_softmax", "softmax"]


def blocked_softmax(q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int = 512, *,
                    causal: bool = True) -> np.ndarray:
    """Softmax attention ``softmax(q k^T / sqrt(D) + mask) v``, causal unless `causal` is
    False, a block of queries at a time.

    Shapes: q, k (b, N, D); v (b, N, Dv) -> (b, N, Dv). Memory O(b * block * N).
    """
    n, d = q.shape[-2], q.shape[-1]
    out = np.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype)
    for p0 in range(0, n, block):
        p1 = min(p0 + block, n)
        seen = p1 if causal else n  # the keys these queries see
        scores = q[:, p0:p1] @ k[:, :seen].swapaxes(-1, -2) / math.sqrt(d)  # (b, block, seen)
        if causal:
            rows, cols = np.arange(p0, p1)[:, None], np.arange(seen)[None, :]
            scores = np.where(cols <= rows, scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, p0:p1] = (scores @ v[:, :seen]) / scores.sum(axis=-1, keepdims=True)
    return out


def softmax(kind: str, device: str = "cpu") -> tuple[str, Callable[..., Callable[[], Any]]]:
    """(name, make) of softmax attention: ``make(q, k, v, causal)`` takes numpy inputs and
    returns a call to time, torch SDPA on `device` (FlashAttention on a GPU) or
    `blocked_softmax`."""
    if kind in ("auto", "torch"):
        try:
            import torch
        except ImportError:
            if kind == "torch":
                raise
        else:
            sdpa = torch.nn.functional.scaled_dot_product_attention

            def make(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                     causal: bool = True) -> Callable[[], Any]:
                # (1, B*H, N, D): with 4-D inputs torch's CPU SDPA takes its flash kernel.
                args = [torch.from_numpy(x)[None].to(device) for x in (q, k, v)]

                def run() -> Any:
                    with torch.no_grad():
                        out = sdpa(*args, is_causal=causal)
                    if out.is_cuda:
                        torch.cuda.synchronize()
                    return out

                return run

            threads = "GPU" if device.startswith("cuda") else f"{torch.get_num_threads()} threads"
            return f"torch {torch.__version__} sdpa on {device} ({threads})", make
    return "numpy blocked_softmax", lambda q, k, v, causal=True: lambda: blocked_softmax(
        q, k, v, causal=causal)
