"""`ZeroSAttention`, the layer as a PyTorch module: the reference's outputs, its parameters as
the params mapping both ways, streaming, and gradients by central differences."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch")

import zeros_ref  # noqa: E402
from zeros_backends.torch_backend import backend  # noqa: E402
from zeros_backends.torch_backend.layer import ZeroSAttention, from_params, to_params  # noqa: E402


@pytest.mark.req("ZS-LAYER-REFERENCE")
@pytest.mark.parametrize("causal", [True, False])
def test_module_is_the_reference_layer(causal: bool) -> None:
    module = ZeroSAttention(12, 3, causal=causal, first_layer=True, rope="interleaved",
                            seed=4, dtype=torch.float64)
    x = np.random.default_rng(0).normal(size=(2, 19, 12))
    out = module(torch.from_numpy(x)).detach().numpy()
    expected = zeros_ref.layer(x, to_params(module), heads=3, causal=causal, first_layer=True,
                               rope="interleaved")
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_state_dict_is_the_params_mapping_both_ways() -> None:
    params = zeros_ref.random_layer_params(8, 2, seed=9)
    module = from_params(params, heads=2, rope=None)
    assert list(module.state_dict()) == list(zeros_ref.PARAMETERS)
    back = to_params(module)
    assert all(np.array_equal(back[name], params[name]) for name in params)
    with pytest.raises(ValueError, match=r"missing \['wq'\], unknown \['w_q'\]"):
        from_params({k: v for k, v in params.items() if k != "wq"} | {"w_q": params["wq"]},
                    heads=2)


def test_seed_comes_from_torch_by_default() -> None:
    torch.manual_seed(5)
    a = ZeroSAttention(8, 2)
    torch.manual_seed(5)
    b = ZeroSAttention(8, 2)
    assert torch.equal(a.wq, b.wq) and not torch.equal(a.wq, ZeroSAttention(8, 2).wq)


@pytest.mark.req("ZS-LAYER-STREAM")
def test_module_streams() -> None:
    module = ZeroSAttention(8, 2, first_layer=True, seed=1, dtype=torch.float64)
    x = torch.randn(1, 30, 8, dtype=torch.float64)
    whole = module(x)
    out, state = module(x[:, :25], return_state=True)
    pieces = [out]
    for t in range(25, 30):
        out, state = module(x[:, t:t + 1], state=state, return_state=True)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=0, atol=1e-12)


@pytest.mark.req("ZS-LAYER-VARLEN")
@pytest.mark.parametrize("causal", [True, False])
def test_module_takes_packed_sequences(causal: bool) -> None:
    """`forward(x, cu_seqlens=)`: every sequence as if alone (RoPE, prior means and core
    restart), and its states continue each one."""
    module = ZeroSAttention(8, 2, causal=causal, first_layer=True, seed=3, dtype=torch.float64)
    lengths = [7, 0, 12, 1]
    x = torch.randn(2, sum(lengths), 8, dtype=torch.float64)
    cu = torch.tensor(np.cumsum([0, *lengths]))
    packed = module(x, cu_seqlens=cu)
    alone = [module(x[:, a:b]) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    torch.testing.assert_close(packed, torch.cat(alone, dim=1), rtol=0, atol=1e-12)
    if causal:
        _, states = module(x, cu_seqlens=cu, return_state=True)
        assert states.length == tuple(lengths)


@pytest.mark.parametrize(("causal", "rope"), [(True, "half"), (False, "interleaved")])
def test_gradients_of_every_parameter_match_central_differences(causal: bool, rope: str) -> None:
    """torch.autograd.gradcheck in float64: x and all 14 parameters, by central differences."""
    module = ZeroSAttention(8, 2, causal=causal, first_layer=True, rope=rope, seed=2,
                            dtype=torch.float64)
    names = list(zeros_ref.PARAMETERS)
    leaves = [torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)]
    leaves += [getattr(module, name).detach().clone().requires_grad_(True) for name in names]

    def layer(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return backend.layer(x, dict(zip(names, values)), **module.options)

    assert torch.autograd.gradcheck(layer, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5)
    loss = module(leaves[0].detach()).square().sum()
    loss.backward()
    assert all(getattr(module, name).grad is not None for name in names)


def test_docstring_example_runs() -> None:
    import doctest

    from zeros_backends.torch_backend import layer

    failed, tried = doctest.testmod(layer, verbose=False)
    assert (failed, tried >= 2) == (0, True)
