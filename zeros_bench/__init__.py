"""zeros_bench (the ``zeros-bench`` command): time a ZeroS backend against the reference and
softmax attention.

For every shape of the chosen configuration it times, in one run, the backend, the reference
`zeros_ref.attention` on NumPy, and causal softmax attention (PyTorch's
``scaled_dot_product_attention`` on CPU when torch imports, else `blocked_softmax`), plus a
one-token decode step with a carried state at a short and a long context, and the float32
GEMM rate of the machine (a large NumPy matmul). From these it derives

- the backend's achieved FLOP/s on the chunked form's count, ``B*H * N * (12 D Dv +
  2 C (D + Dv))`` (the state read and update, 3D x Dv each way, plus the C x C products), and
  its share of the GEMM rate;
- on CPU backends, its share of the *product ceiling*: the FLOP/s of the chunked form's
  products alone (`product_rate`), timed at the form's own small shapes on all CPUs. No
  implementation that issues one BLAS product per chunk can beat it; the gap between the
  ceiling and the GEMM rate is the BLAS's, the gap below the ceiling is the backend's;
- the time ratios backend / softmax and reference / backend, and, for a backend with worker
  threads (a ``workers`` attribute) on a machine with several CPUs, reference / backend on
  one worker: the reference runs on one thread, so this ratio compares like with like;
- the scaling ratios time(8N) / time(N) and peak memory(8N) / peak memory(N) (spec ZS-ON-TIME,
  ZS-ON-MEMORY; a linear method gives about 8, a quadratic one about 64);
- the decode ratio time(long context) / time(short context) (ZS-ON-DECODE);
- with ``--varlen``, for a backend claiming the feature "varlen", the packed batch of spec 5.2
  (`zeros_bench.varlen`): T tokens in sequences of random lengths timed as one packed call with
  ``cu_seqlens``, as one dense sequence and padded to the longest sequence, with the ratios
  packed / dense and padded / dense (ZS-ON-VARLEN).

Before timing, `correctness_gate` runs the quick conformance profile; a backend that fails a
MUST requirement gets no timings (exit status 1). Devices are synchronised through the
backend's optional ``synchronize()`` after each timed call; peak memory comes from its
optional ``memory_peak(fn)``, or from tracemalloc for NumPy arrays. Every timing is the
minimum over repeats (the machine's noise only ever adds time); medians are kept in the JSON.

Usage: ``zeros-bench [--backend numpy] [--config NAME] [--quick] [--varlen] [--json out.json]
[--plot out.png]``.

Modules, one job each: `configs` (the shapes and packed batches), `measure` (timings, memory,
rates, one row), `varlen` (the packed batch), `baselines` (softmax attention), `gate` (the
quick conformance run first), `report` (machine, table, plot) and `cli`. The machine
description and the BLAS-thread limit come from `zeros_machine`, shared with the NumPy backend
and the conformance report.
"""

from .baselines import blocked_softmax, softmax
from .cli import main, run
from .configs import CONFIGS, DEFAULT_CONFIGS, PACKED, Config, Packed, Shape
from .gate import correctness_gate
from .measure import (
    chunked_flops,
    derive,
    gemm_rate,
    measure_decode,
    measure_shape,
    peak_memory,
    product_rate,
    timed,
)
from .report import machine, plot, table
from .varlen import measure_varlen, padded_bytes, varlen_lines

__all__ = [
    "CONFIGS",
    "DEFAULT_CONFIGS",
    "PACKED",
    "Config",
    "Packed",
    "Shape",
    "blocked_softmax",
    "chunked_flops",
    "correctness_gate",
    "derive",
    "gemm_rate",
    "machine",
    "main",
    "measure_decode",
    "measure_shape",
    "measure_varlen",
    "padded_bytes",
    "peak_memory",
    "plot",
    "product_rate",
    "run",
    "softmax",
    "table",
    "timed",
    "varlen_lines",
]
