"""The backend protocol in one place (`zeros_conformance.protocol`), the scaffolding the checks
share (`agreement`, `rounded`, `Context.logit_kinds`) and the builder of a run from its
options (`zeros_conformance.options`), which the CLI and the pytest plugin both use."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import zeros_ref
from zeros_conformance import TOLERANCE, Context, Limits, Session, protocol, registry
from zeros_conformance import _harness as harness  # the helpers the checks share
from zeros_conformance.options import (
    BackendError,
    OptionError,
    RunOptions,
    cli_flag,
    open_session,
)

ROOT = Path(__file__).resolve().parent.parent


def bare(**extra: Any) -> SimpleNamespace:
    """A backend with the required attributes of spec 10.1 only (plus `extra`)."""
    required = {"name": "bare", "dtypes": ("float64",),
                "from_numpy": lambda x, dtype: np.asarray(x, dtype=dtype),
                "to_numpy": np.asarray,
                "attention": lambda q, k, v, **options: zeros_ref.attention(q, k, v, **options)}
    return SimpleNamespace(**{**required, **extra})


# -- accessors ------------------------------------------------------------------------------


def test_every_optional_attribute_has_its_fallback() -> None:
    b = bare()
    assert protocol.features(b) == {"core"} | protocol.IMPLIED
    assert protocol.device(b) == "cpu"
    assert protocol.synchronize(b)() is None
    assert protocol.memory_peak(b) is None
    assert protocol.gradients(b) is None and protocol.layer(b) is None
    assert protocol.chunk_size(b) == zeros_ref.DEFAULT_CHUNK_SIZE
    assert protocol.slab_size(b) is None
    assert protocol.workers(b) is None and not protocol.is_threaded(b)
    assert protocol.name(b) == "bare" and protocol.protocol_problems(b) == []


class _Device:
    """A device object, as torch has: the reports take its `str`."""

    def __str__(self) -> str:
        return "cuda:1"


def test_accessors_read_what_a_backend_declares() -> None:
    calls = []
    b = bare(features=frozenset({"state"}), device=_Device(),
             synchronize=lambda: calls.append("sync"), memory_peak=lambda fn: 123,
             layer=lambda x, params, **options: x, chunk_size=32, slab_size=4, workers=3)
    assert protocol.features(b) == {"core", "state"}
    assert protocol.device(b) == "cuda:1"
    protocol.synchronize(b)()
    assert calls == ["sync"]
    assert protocol.memory_peak(b)(lambda: None) == 123
    assert protocol.layer(b) is b.layer
    assert (protocol.chunk_size(b), protocol.slab_size(b), protocol.workers(b)) == (32, 4, 3)
    assert protocol.is_threaded(b)


def test_a_layer_method_claims_the_layer_when_features_are_not_given() -> None:
    assert "layer" in protocol.features(bare(layer=lambda x, params, **options: x))
    assert "layer" not in protocol.features(bare(layer="not callable"))


def test_workers_none_is_threaded_but_an_absent_attribute_is_not() -> None:
    assert protocol.is_threaded(bare(workers=None)) and protocol.workers(bare(workers=None)) is None
    assert not protocol.is_threaded(bare())


class _CpuOnly:
    """A property that raises `AttributeError` is an absent attribute."""

    @property
    def memory_peak(self) -> Any:
        raise AttributeError("no device memory here")


def test_memory_peak_is_the_method_if_present_else_none() -> None:
    assert protocol.memory_peak(_CpuOnly()) is None
    assert protocol.memory_peak(bare(memory_peak=7)) is None  # not callable


def test_a_backend_without_name_or_dtypes_is_still_named_in_reports() -> None:
    b = SimpleNamespace()
    assert protocol.name(b) == "?" and protocol.usable_dtypes(b) == ()
    assert any(p.startswith("`dtypes`") for p in protocol.protocol_problems(b))


def test_the_keyword_contract_is_the_signature_of_backend_attention() -> None:
    assert protocol.ATTENTION_KEYWORDS == ("logits", "first", "higher", "zero", "causal",
                                           "state", "return_state")
    assert set(protocol.STATE_KEYWORDS) <= set(protocol.ATTENTION_KEYWORDS)


@pytest.mark.parametrize("name", ["reference", "numpy"])
def test_registered_backends_keep_the_protocol(name: str) -> None:
    assert protocol.protocol_problems(registry.load(name)) == []


def test_nothing_outside_the_protocol_looks_a_backend_attribute_up_by_name() -> None:
    pattern = re.compile(r"\b(getattr|hasattr)\((backend|b|ctx\.backend|self\.backend)\b"
                         r"|__module__")
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("conformance", "zeros_bench")
             for path in sorted((ROOT / folder).rglob("*.py"))
             if path.name != "protocol.py"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert found == []


# -- scaffolding of the checks --------------------------------------------------------------


def test_logit_kinds_follow_the_default_logits_feature() -> None:
    assert Context(bare(), target="").logit_kinds() == ("explicit", "default")
    ctx = Context(bare(features=frozenset({"state"})), target="")
    assert ctx.logit_kinds() == ("explicit",) and ctx.modes() == (True,)


def test_rounded_rounds_nested_arrays_and_keeps_the_rest() -> None:
    ctx = Context(bare(dtypes=("float32", "float64")), target="")
    x = np.array([1 / 3])
    seen = harness.rounded(ctx, {"x": x, "params": {"w": x}, "gate": 0.5}, "float32")
    assert seen["x"] == seen["params"]["w"] == np.float32(1 / 3)
    assert seen["x"].dtype == np.float64 and seen["gate"] == 0.5


def test_one_agreement_helper_with_a_hook_for_the_run() -> None:
    ctx = Context(bare(), target="")
    inputs = harness.random_inputs(np.random.default_rng(0), (2,), 9, 3, 2)
    default = harness.agreement(ctx, inputs, "float64", causal=True, seed=0)
    hooked = harness.agreement(ctx, inputs, "float64", causal=True, seed=0,
                               run=lambda: harness.reference(inputs, causal=True))
    assert default.passed and hooked.passed and default.case == hooked.case
    assert default.case["causal"] is True and default.case["seed"] == 0

    def crash() -> np.ndarray:
        raise RuntimeError("kernel died")

    failed = harness.agreement(ctx, inputs, "float64", run=crash, case={"mine": 1})
    assert (failed.value, failed.limit, failed.case) == (np.inf, TOLERANCE["float64"],
                                                         {"mine": 1})
    assert not failed.passed and "kernel died" in failed.message
    off = harness.agreement(ctx, inputs, "float64", expected=lambda seen: seen["v"] * 0,
                            scale=lambda seen, want: np.ones(want.shape[:-1]))
    assert not off.passed


# -- one builder of a run ---------------------------------------------------------------------


def test_options_make_the_session() -> None:
    options = RunOptions("reference", profile="quick", seed=7, dtypes=("float64", "float32"),
                         only=("ZS-DEF-GATES", "ZS-DEF-WEIGHTS"), strict_xfails=True,
                         memory_limit=1.5, time_limit=30.0)
    session = open_session(options)
    ctx = session.ctx
    assert (ctx.target, ctx.profile, ctx.seed, ctx.dtypes) == ("reference", "quick", 7,
                                                               ("float32", "float64"))
    assert [r.id for r in session.requirements] == ["ZS-DEF-WEIGHTS", "ZS-DEF-GATES"]
    assert session.limits == Limits(int(1.5 * 2**30), 30.0) and session.strict_xfails
    default = open_session(RunOptions("reference"))
    assert default.limits.seconds == Limits().seconds and default.ctx.profile == "full"
    assert default.ctx.dtypes == ("float16", "float32", "float64") and not default.xfails


def test_session_run_reports_progress_and_exit_code() -> None:
    ctx = Context(registry.load("reference"), target="", profile="quick")
    session = Session(ctx, only=["ZS-API-PROTOCOL"])
    seen: list[str] = []
    outcomes = session.run(lambda number, total, item: seen.append(f"{number}/{total}"))
    assert [o.status for o in outcomes] == ["passed"] and seen == ["1/1", "1/1"]
    assert session.exit_code() == 0


@pytest.fixture
def no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(target: str) -> None:
        raise AssertionError(f"{target!r} was loaded before the options were checked")

    monkeypatch.setattr(registry, "load", load)


@pytest.mark.parametrize(("options", "option", "message"), [
    (RunOptions("x", only=("ZS-NOPE",)), "only", "--only: unknown requirement IDs ['ZS-NOPE']"),
    (RunOptions("x", seed=-1), "seed", "--seed: must be in 0..4294967295; got -1"),
    (RunOptions("x", profile="slow"), "profile", "must be one of quick, full"),
    (RunOptions("x", time_limit=float("nan")), "memory_limit",
     "--memory-limit and --time-limit must be positive and finite"),
    (RunOptions("x", memory_limit=0.0), "memory_limit", "must be positive"),
    (RunOptions("x", xfails="/nonexistent/xfails.txt"), "xfails", "--xfails: "),
])
def test_wrong_options_are_refused_before_the_backend_loads(
        options: RunOptions, option: str, message: str, no_backend: None) -> None:
    with pytest.raises(OptionError) as refused:
        open_session(options)
    assert refused.value.option == option and message in str(refused.value)


def test_messages_spell_the_options_as_the_front_end_does(no_backend: None) -> None:
    assert cli_flag("dtypes") == "--dtype" and cli_flag("strict_xfails") == "--strict-xfails"
    with pytest.raises(OptionError, match="--zeros-seed: must be in"):
        open_session(RunOptions("x", seed=2**32), flag=lambda o: "--zeros-" + o.replace("_", "-"))


def test_dtypes_are_checked_against_the_claims() -> None:
    with pytest.raises(OptionError, match=r"--dtype bfloat16 is not claimed by the backend "
                                          r"\(it claims float16, float32, float64\)"):
        open_session(RunOptions("reference", dtypes=("bfloat16",)))


def test_a_backend_that_cannot_run_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="cannot load backend: unknown backend 'nope'"):
        open_session(RunOptions("nope"))
    monkeypatch.setattr(registry, "load", lambda target: bare(dtypes=("float8",)))
    with pytest.raises(BackendError, match=r"claims no known dtype \(`dtypes` must be"):
        open_session(RunOptions("eight"))
