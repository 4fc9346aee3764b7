"""The Triton kernels of the chunked causal form (spec 4.2), behind the `Form` seam of
`zeros_backends.torch_backend.chunked`.

Two kernels, in the structure of flash-linear-attention's chunked kernels:

- `_state_kernel`, grid (R, D tiles, Dv tiles): each program walks the nc chunks of its row in
  order (spec 4.2, step 6). Chunks never span two sequences of a packed call (the chunk plan
  of `zeros_backends.torch_backend.plan`): where chunk c starts a sequence, the sums restart
  from that sequence's initial ones, and after a sequence's last chunk they are stored as its
  final sums. For chunk c it first writes the sums the chunk reads (F before it,
  in the frame M_{c-1}; E; G' about s_ref; H) to an (R, nc, 3, D, Dv) buffer, then absorbs
  ``U_c = K_c^T [w v | rel v | v]``: ``F <- exp(M_{c-1} - M_c) F + K^T (w v)`` (a decay <= 1,
  w = exp(s - M_c) <= 1), ``E <- exp(M_{c-1} - M_c) E + sum w`` (the chunk's sum of w is one
  torch reduction), ``G' <- G' + K^T (rel v)``, ``H <- H + K^T v``.
- `_output_kernel`, grid (R nc, Dv tiles): every chunk at once (spec 4.2, steps 2-5). The
  C x C weights ``W[t, i] = cos[t, i] (a_t exp(s_i - m_t) + b_t (rel_i - mean_t) + c_t)``,
  i <= t, each with row t's own frame m_t, so every exponent is <= 0 (never a factorisation
  ``exp(G_t) exp(-G_i)``, which overflows at logit spans of 1e4, ZS-STAB-RANGE); then the
  chunks before through the buffered sums,
  ``qh_t^T (a_t decay_t F + b_t G' + (c_t - b_t mean_t) H)``.

The kernels read float32 (`Chunks` holds the compute dtype: float32 for float16, bfloat16
and float32 inputs) and accumulate in float32; products run at IEEE float32 precision for
float32 inputs and at TF32 for float16 and bfloat16 ones (`forward`'s ``precision``). Under
``TRITON_INTERPRET=1`` they run on CPU tensors, one fixed configuration (the interpreter
cannot autotune); on CUDA with the tiles of `Config.for_device`.

Shapes: R rows, nc chunks of C tokens, D and Dv (see `zeros_backends.torch_backend.chunked.Chunks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from zeros_backends.torch_backend.chunked import Chunks, Sequences, Sums

__all__ = ["INTERPRETED", "PRECISIONS", "Config", "forward"]

PRECISIONS = ("ieee", "tf32")
"""The precisions of the kernels' products (`tl.dot`'s ``input_precision``)."""


@dataclass(frozen=True)
class Config:
    """Tile sizes of one launch: `block_d` x `block_v` tiles of the (D, Dv) sums in the state
    kernel, `block_v` columns of the output per output program, `warps` per program."""

    block_d: int
    block_v: int
    warps: int = 4

    @classmethod
    def for_device(cls, d: int, dv: int, *, interpreted: bool | None = None) -> Config:
        """Whole D and Dv in one tile under the interpreter (fewer programs, each a numpy
        operation); tiles of at most 64 on a GPU (registers). `interpreted` defaults to
        `INTERPRETED`."""
        if INTERPRETED if interpreted is None else interpreted:
            return cls(_width(d), _width(dv), 1)
        return cls(min(_width(d), 64), min(_width(dv), 64), 8 if d > 64 else 4)


def _width(n: int) -> int:
    """A block length covering n: a power of two, at least 16 (the smallest `tl.dot` side)."""
    return max(16, triton.next_power_of_2(n))


@triton.jit
def _state_kernel(k_ptr, v_ptr, w_ptr, w_sum_ptr, rel_ptr, m_prev_ptr, m_end_ptr,
                  segment_ptr, start_ptr, end_ptr, f0_ptr, e0_ptr, g0_ptr, h0_ptr, kv_ptr, e_ptr,
                  f1_ptr, e1_ptr, g1_ptr, h1_ptr, R, NC, D: tl.constexpr, DV: tl.constexpr,
                  C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
                  HAS_INIT: tl.constexpr, FINALS: tl.constexpr):
    """The sums before every chunk of one row and one (BD, BV) tile; where a chunk starts a
    sequence they restart from its initial sums (zeros without `HAS_INIT`), and with
    `FINALS` the sums after a sequence's last chunk are stored as its final ones."""
    row = tl.program_id(0).to(tl.int64)
    tile_d, tile_v = tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    cols_d = tile_d * BD + tl.arange(0, BD)  # (BD,)
    cols_v = tile_v * BV + tl.arange(0, BV)  # (BV,)
    in_d, in_v = cols_d[None, :] < D, cols_v[None, :] < DV  # (1, BD), (1, BV)
    in_tile = (cols_d[:, None] < D) & in_v  # (BD, BV)
    square = D * DV
    inner = cols_d[:, None] * DV + cols_v[None, :]  # (BD, BV) offsets in a (D, Dv) matrix
    f = tl.zeros((BD, BV), dtype=tl.float32)
    g = tl.zeros((BD, BV), dtype=tl.float32)
    h = tl.zeros((BD, BV), dtype=tl.float32)
    e = tl.zeros([], dtype=tl.float32)
    writes_e = (tile_d == 0) & (tile_v == 0)
    # Pointers to chunk 0 of this row, moved on by one chunk per step.
    tok = row * NC * C + tl.arange(0, C)  # (C,) tokens in (R, nc C)
    column = tok[:, None]  # (C, 1)
    keys_at = k_ptr + (column * D + cols_d[None, :])  # (C, BD)
    values_at = v_ptr + (column * DV + cols_v[None, :])  # (C, BV)
    w_at, rel_at = w_ptr + tok, rel_ptr + tok  # (C,)
    frame_at = row * NC  # chunk 0 of this row in (R, nc)
    sums_at = kv_ptr + row * NC * (3 * square) + inner  # (BD, BV): F before chunk 0
    for c in range(NC):
        # A chunk that starts a sequence begins from its initial sums, (S, R, D, Dv).
        seq = tl.load(segment_ptr + c)
        starts = tl.load(start_ptr + c) != 0
        at_seq = seq * R + row
        if HAS_INIT:
            f = tl.where(starts, tl.load(f0_ptr + at_seq * square + inner, mask=in_tile,
                                         other=0.0), f)
            g = tl.where(starts, tl.load(g0_ptr + at_seq * square + inner, mask=in_tile,
                                         other=0.0), g)
            h = tl.where(starts, tl.load(h0_ptr + at_seq * square + inner, mask=in_tile,
                                         other=0.0), h)
            e = tl.where(starts, tl.load(e0_ptr + at_seq), e)
        else:
            f = tl.where(starts, 0.0, f)
            g = tl.where(starts, 0.0, g)
            h = tl.where(starts, 0.0, h)
            e = tl.where(starts, 0.0, e)
        tl.store(sums_at, f, mask=in_tile)
        tl.store(sums_at + square, g, mask=in_tile)
        tl.store(sums_at + 2 * square, h, mask=in_tile)
        tl.store(e_ptr + frame_at, e, mask=writes_e)
        keys = tl.load(keys_at, mask=in_d, other=0.0)  # (C, BD)
        values = tl.load(values_at, mask=in_v, other=0.0)  # (C, BV)
        w = tl.load(w_at)  # (C,) exp(s - M_c)
        rel = tl.load(rel_at)  # (C,) s - s_ref
        decay = tl.exp(tl.load(m_prev_ptr + frame_at) - tl.load(m_end_ptr + frame_at))  # <= 1
        keys_t = tl.trans(keys)  # (BD, C)
        f = f * decay + tl.dot(keys_t, values * w[:, None], input_precision=PRECISION)
        g += tl.dot(keys_t, values * rel[:, None], input_precision=PRECISION)
        h += tl.dot(keys_t, values, input_precision=PRECISION)
        e = e * decay + tl.load(w_sum_ptr + frame_at)  # the chunk's sum of w
        if FINALS:  # the last chunk of its sequence
            ends = tl.load(end_ptr + c) != 0
            # (the flag loaded as a tile: Triton's interpreter cannot mask with a scalar
            # broadcast against a tile)
            in_end = in_tile & (tl.load(end_ptr + c + 0 * inner) != 0)
            tl.store(f1_ptr + at_seq * square + inner, f, mask=in_end)
            tl.store(g1_ptr + at_seq * square + inner, g, mask=in_end)
            tl.store(h1_ptr + at_seq * square + inner, h, mask=in_end)
            tl.store(e1_ptr + at_seq, e, mask=writes_e & ends)
        keys_at += C * D
        values_at += C * DV
        w_at += C
        rel_at += C
        frame_at += 1
        sums_at += 3 * square


@triton.jit
def _output_kernel(q_ptr, k_ptr, v_ptr, s_ptr, rel_ptr, m_row_ptr, decay_ptr, mean_ptr,
                   g1_ptr, gh_ptr, g0_ptr, t_ptr, kv_ptr, e_ptr, out_ptr,
                   NC, D: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BD: tl.constexpr,
                   BV: tl.constexpr, PRECISION: tl.constexpr):
    """Outputs (C, BV) of one chunk: the C x C part plus the chunks before."""
    at = tl.program_id(0).to(tl.int64)  # chunk index in (R, nc)
    tile_v = tl.program_id(1).to(tl.int64)
    tok = tl.arange(0, C)
    tokens = at * C + tok  # (C,) in (R, nc C)
    column = tokens[:, None]  # (C, 1)
    cols_d = tl.arange(0, BD).to(tl.int64)
    cols_v = tile_v * BV + tl.arange(0, BV)
    down_d, across_d, across_v = cols_d[:, None], cols_d[None, :], cols_v[None, :]
    in_d, in_v = across_d < D, across_v < DV  # (1, BD), (1, BV)
    vectors = column * D + across_d  # (C, BD) offsets of q and k
    q = tl.load(q_ptr + vectors, mask=in_d, other=0.0)  # (C, BD)
    keys = tl.load(k_ptr + vectors, mask=in_d, other=0.0)  # (C, BD)
    s = tl.load(s_ptr + tokens)
    m_row = tl.load(m_row_ptr + tokens)  # m_t, row t's running max
    decay = tl.load(decay_ptr + tokens)  # exp(M_{c-1} - m_t)
    mean = tl.load(mean_ptr + tokens)  # sbar_t - s_ref
    rel = tl.load(rel_ptr + tokens)
    g1, gh, g0 = tl.load(g1_ptr + tokens), tl.load(gh_ptr + tokens), tl.load(g0_ptr + tokens)
    t = tl.load(t_ptr + (at % NC) * C + tok)
    # Steps 2-3: exp(s_i - m_t) for i <= t, exponents <= 0; E_t in row t's frame. The minimum
    # changes no visible real key (s_i <= m_t); padding keys (s = 0, seen by padding rows
    # only, whose outputs are dropped) would otherwise overflow.
    visible = tok[None, :] <= tok[:, None]  # (C, C)
    gap = tl.where(visible, tl.minimum(s[None, :] - m_row[:, None], 0.0), float("-inf"))
    ex = tl.exp(gap)  # (C, C)
    a = gh / (decay * tl.load(e_ptr + at) + tl.sum(ex, axis=1))  # gh_t / E_t
    b = (g1 - gh) / t
    c_rel = (g0 - gh) / t - b * mean  # c_t - b_t (sbar_t - s_ref): the weight of H
    # Step 4: the weights within the chunk, b_t (s_i - sbar_t) = b_t rel_i - b_t mean_t.
    r = a[:, None] * ex + b[:, None] * rel[None, :] + c_rel[:, None]
    cos = tl.dot(q, tl.trans(keys), input_precision=PRECISION)  # (C, C)
    weights = tl.where(visible, r * cos, 0.0)
    rows_v = column * DV + across_v  # (C, BV) offsets of v and the output
    values = tl.load(v_ptr + rows_v, mask=in_v, other=0.0)  # (C, BV)
    out = tl.dot(weights, values, input_precision=PRECISION)  # (C, BV)
    # Step 5: the chunks before, from the sums the state kernel wrote.
    square = D * DV
    f_at = kv_ptr + at * (3 * square) + (down_d * DV + across_v)  # (BD, BV)
    in_tile = (down_d < D) & in_v  # (BD, BV)
    f = tl.load(f_at, mask=in_tile, other=0.0)
    out += (a * decay)[:, None] * tl.dot(q, f, input_precision=PRECISION)
    g = tl.load(f_at + square, mask=in_tile, other=0.0)
    out += b[:, None] * tl.dot(q, g, input_precision=PRECISION)
    h = tl.load(f_at + 2 * square, mask=in_tile, other=0.0)
    out += c_rel[:, None] * tl.dot(q, h, input_precision=PRECISION)
    tl.store(out_ptr + rows_v, out, mask=in_v)


INTERPRETED = type(_output_kernel).__name__ == "InterpretedFunction"
"""Whether these kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when this
module was imported, which is when ``triton.jit`` decides): on CPU tensors."""


def forward(chunks: Chunks, sequences: Sequences, config: Config | None = None, *,
            precision: str = "ieee") -> tuple[torch.Tensor, Sums | None]:
    """The `Form` of the Triton backend: outputs (R, N, Dv) of the tokens and, if
    ``sequences.finals``, the sums after each sequence's last chunk, computed by the two
    kernels (no autograd; see `autograd.form`).

    Parameters
    ----------
    chunks : Chunks
        float32 tensors on the kernels' device (CPU under the interpreter, else CUDA); C a
        power of two, at least 16. The kernels read the vectors as `Chunks.vectors` gives
        them (unit directions and finite values, in the slots), taken here for the whole
        call, and write the outputs of the slots, returned per token (`Chunks.tokens`).
    sequences : Sequences
        The sequences' initial sums, (S, R, D, Dv) and E (S, R), or None for zeros; S; and
        whether their final sums are wanted.
    config : Config or None
        Tiles; None takes `Config.for_device`.
    precision : str
        ``input_precision`` of the products on a GPU: ``"ieee"`` (float32 inputs) or
        ``"tf32"`` (enough for float16 and bfloat16 inputs, whose own rounding is coarser;
        tensor cores). The interpreter computes every product in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; got {precision!r}")
    rows, nc, chunk = chunks.w.shape
    d, dv = chunks.q.shape[-1], chunks.v.shape[-1]
    if chunks.q.dtype != torch.float32:
        raise TypeError(f"the Triton kernels compute in float32; got {chunks.q.dtype}")
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"`chunk` must be a power of two >= 16 for the Triton kernels; "
                         f"got {chunk}")
    config = config or Config.for_device(d, dv)
    # The kernels read unit directions and finite values, taken here for the whole call.
    q, k, v = chunks.vectors()
    x = chunks._replace(q=q, k=k, v=v).map(torch.Tensor.contiguous)
    kv = x.q.new_empty((rows, nc, 3, d, dv))  # the sums before every chunk
    e_before = x.q.new_empty((rows, nc))
    count = sequences.count
    init = (sequences.init.map(torch.Tensor.contiguous) if sequences.init is not None
            else Sums(f=kv, e=e_before, g=kv, h=kv))  # not read
    finals = Sums(f=x.q.new_zeros((count, rows, d, dv)), e=x.q.new_zeros((count, rows)),
                  g=x.q.new_zeros((count, rows, d, dv)),
                  h=x.q.new_zeros((count, rows, d, dv))) if sequences.finals else None
    out_sums = finals or Sums(f=kv, e=e_before, g=kv, h=kv)  # not written
    w_sum = x.w.sum(dim=-1)  # (R, nc)
    grid = (rows, triton.cdiv(d, config.block_d), triton.cdiv(dv, config.block_v))
    _state_kernel[grid](x.k, x.v, x.w, w_sum, x.rel, x.m_prev, x.m_end, x.segment,
                        x.start.to(torch.int8), x.end.to(torch.int8), init.f, init.e,
                        init.g, init.h, kv, e_before, out_sums.f, out_sums.e, out_sums.g,
                        out_sums.h, rows, nc, D=d, DV=dv, C=chunk,
                        BD=config.block_d, BV=config.block_v, PRECISION=precision,
                        HAS_INIT=sequences.init is not None, FINALS=sequences.finals,
                        num_warps=config.warps)
    out = x.q.new_empty((rows, nc, chunk, dv))
    grid = (rows * nc, triton.cdiv(dv, config.block_v))
    _output_kernel[grid](x.q, x.k, x.v, x.s, x.rel, x.m_row, x.decay, x.mean, x.first,
                         x.higher, x.zero, x.t, kv, e_before, out, nc, D=d, DV=dv, C=chunk,
                         BD=_width(d), BV=config.block_v, PRECISION=precision,
                         num_warps=config.warps)
    return chunks.tokens(out), finals
