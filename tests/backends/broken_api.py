"""Deliberately broken backends around the reference: each is `zeros_ref.attention` behind
the protocol with one thing changed in how it is called, what it claims or what it rejects.

`reference_twin` is the unchanged wrapper, with the same claims: it passes every check its
mutants fail, so each failure comes from the planted mistake.

| backend | mistake | requirement that must fail |
| --- | --- | --- |
| reference_twin | none: the correct twin | (passes them all) |
| misnamed_feature | claims the feature "streaming" (meaning "state") | ZS-API-PROTOCOL |
| bidirectional_by_default | `causal=False` is the default | ZS-API-KEYWORDS |
| answers_empty_d | D = 0 answered with zeros (every cosine 0), no ValueError | ZS-ERR-SHAPE |
| coerces_gates | Python-scalar gates taken through float(): True and "0.5" pass | ZS-ERR-DTYPE |
| raises_on_empty | N = 0 raises ValueError instead of returning (*B, 0, Dv) | ZS-ERR-EMPTY |
| bidirectional_ignores_state | `state`, `return_state` ignored if `causal=False` | ZS-ERR-STATE |
| casts_state | a state of another dtype converted instead of rejected | ZS-ERR-STATE |
| normalised_key_logits | default logits of the unit keys, not of the raw keys | ZS-ACC-REFERENCE |
| restarts_every_8192 | sequences cut into 8192-token segments, each a new sequence | ZS-STAB-LONG |
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from _numpy import NumpyArrays
from array_api_compat import array_namespace

import zeros_ref
from zeros_ref import kernel


class Reference(NumpyArrays):
    """`zeros_ref.attention` on NumPy arrays, claiming every feature it has but "layer"."""

    name = "reference-twin"
    features = frozenset({"bidirectional", "state", "default_logits"})

    def attention(self, q, k, v, **options):
        return zeros_ref.attention(q, k, v, **options)


class MisnamedFeature(Reference):
    """Claims "streaming" where the protocol's name is "state" (an unknown feature)."""

    name = "misnamed-feature"
    features = frozenset({"bidirectional", "streaming", "default_logits"})


class BidirectionalByDefault(Reference):
    """The keyword names are right, but `causal` defaults to False."""

    name = "bidirectional-by-default"

    def attention(self, q, k, v, *, logits=None, first=1.0, higher=1.0, zero=0.0, causal=False,
                  state=None, return_state=False):
        return super().attention(q, k, v, logits=logits, first=first, higher=higher, zero=zero,
                                 causal=causal, state=state, return_state=return_state)


class AnswersEmptyD(Reference):
    """D = 0 is given the answer with every cosine 0 (zeros, the default gates' zero-order
    term being 0 too) instead of the ValueError naming `q` of spec 8."""

    name = "answers-empty-d"

    def attention(self, q, k, v, **options):
        if q.shape[-1] == 0 and k.shape[-1] == 0:
            batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
            return np.zeros((*batch, *v.shape[-2:]), dtype=v.dtype)
        return super().attention(q, k, v, **options)


class CoercesGates(Reference):
    """Gates that are not arrays go through float() first, so a bool or a numeric string is
    taken for a number instead of raising TypeError."""

    name = "coerces-gates"

    def attention(self, q, k, v, **options):
        for name in ("first", "higher", "zero"):
            if name in options and not isinstance(options[name], np.ndarray):
                options[name] = float(options[name])
        return super().attention(q, k, v, **options)


class RaisesOnEmpty(Reference):
    """N = 0 is refused, as a kernel whose launch grid may not be empty would."""

    name = "raises-on-empty"

    def attention(self, q, k, v, **options):
        if q.shape[-2] == 0:
            raise ValueError("`q` must hold at least one token")
        return super().attention(q, k, v, **options)


class BidirectionalIgnoresState(Reference):
    """With `causal=False`, a given `state` and `return_state=True` are dropped silently."""

    name = "bidirectional-ignores-state"

    def attention(self, q, k, v, *, causal=True, **options):
        if not causal:
            options.pop("state", None)
            options.pop("return_state", None)
        return super().attention(q, k, v, causal=causal, **options)


class CastsState(Reference):
    """A state of another dtype is converted to the inputs' compute dtype instead of being
    rejected with TypeError (a float32 prefill continued in float64 silently keeps float32's
    precision)."""

    name = "casts-state"

    def attention(self, q, k, v, *, state=None, **options):
        compute = np.float32 if q.dtype.itemsize < 4 else q.dtype
        if isinstance(state, zeros_ref.State) and state.kv.dtype != compute:
            arrays = ("running_max", "mean_offset", "normaliser", "kv", "key_sum")
            state = replace(state, **{f: getattr(state, f).astype(compute) for f in arrays})
        return super().attention(q, k, v, state=state, **options)


class NormalisedKeyLogits(Reference):
    """The default logits taken from the unit keys instead of the raw keys (spec 3: "of the
    raw keys k (before normalisation)"). Without "state": only this mistake differs."""

    name = "normalised-key-logits"
    features = frozenset({"bidirectional", "default_logits"})

    def attention(self, q, k, v, *, logits=None, causal=True, **options):
        if logits is None:
            logits = zeros_ref.deviation_logits(kernel.unit(array_namespace(k), k),
                                                causal=causal)
        return super().attention(q, k, v, logits=logits, causal=causal, **options)


class RestartsEvery8192(Reference):
    """A grid of at most 8192 positions: a longer causal sequence is computed as independent
    segments of 8192 tokens (the later ones forget the prefix, default logits included)."""

    name = "restarts-every-8192"
    features = frozenset({"bidirectional", "default_logits"})
    segment = 8192

    def attention(self, q, k, v, *, logits=None, causal=True, **options):
        n = q.shape[-2]
        if not causal or n <= self.segment:
            return super().attention(q, k, v, logits=logits, causal=causal, **options)
        pieces = []
        for a in range(0, n, self.segment):
            cut = slice(a, a + self.segment)
            part = {name: g[..., cut] if np.ndim(g) and np.shape(g)[-1] == n else g
                    for name, g in options.items()}
            pieces.append(super().attention(
                q[..., cut, :], k[..., cut, :], v[..., cut, :],
                logits=None if logits is None else logits[..., cut], **part))
        return np.concatenate(pieces, axis=-2)


reference_twin = Reference()
misnamed_feature = MisnamedFeature()
bidirectional_by_default = BidirectionalByDefault()
answers_empty_d = AnswersEmptyD()
coerces_gates = CoercesGates()
raises_on_empty = RaisesOnEmpty()
bidirectional_ignores_state = BidirectionalIgnoresState()
casts_state = CastsState()
normalised_key_logits = NormalisedKeyLogits()
restarts_every_8192 = RestartsEvery8192()
