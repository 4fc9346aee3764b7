"""The GPU check script (`zeros_bench.gpu_check`): its grid, its run without a CUDA device,
and a rehearsal of the whole harness on the CPU."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the GPU check needs it")

from zeros_bench import gpu_check  # noqa: E402


def test_grid_covers_the_issue_shapes_smallest_first() -> None:
    shapes = gpu_check.GRID.shapes()
    assert len(shapes) == 2 * 4 * 2 * 2 * 2
    assert {s[0] for s in shapes} == {8, 32} and {s[1] for s in shapes} == {1024, 4096, 16384,
                                                                                65536}
    sizes = [bh * n * d for bh, n, d, _, _ in shapes]
    assert sizes == sorted(sizes)
    assert set(gpu_check.GRID.backends) == {"torch-cuda", "triton", "cupy"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_every_gpu_part_is_skipped_clearly(tmp_path, capsys) -> None:
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["cuda"] is None and "no CUDA device" in report["skipped"]
    assert report["bench"] == [] and report["conformance"] == {}


def test_rehearsal_on_the_cpu_runs_every_part(tmp_path) -> None:
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--budget", "120"]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["conformance"]["torch"]["status"] == "conforms"
    assert report["settings"]["torch"] == {"chunk_size": 64, "slab_size": 16}
    assert (tmp_path / "conformance-torch.json").exists()
    timed = {(r["name"], r["n"], r["backward"]) for r in report["bench"] if r["seconds"]}
    assert timed == {(name, n, backward) for name in ("torch", "sdpa") for n in (128, 256)
                     for backward in (False, True)}
    assert len(report["plots"]) == 2 and all((tmp_path / p).exists() for p in report["plots"])
