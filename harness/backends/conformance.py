"""The rules of the backend contract as executable checks on one attention call at a time.

Each check takes a configured :class:`~harness.backends.contract.ResolvedBackend` and an :class:`Inputs`
factory, calls the backend's attention through the harness's own wiring (:func:`attention_function`,
which refuses undeclared dtypes) on small tensors made here, and raises :class:`AssertionError` naming the
rule it found broken. :mod:`harness.testing` is the public face of these checks (with the whole-model ones);
:func:`preflight` is the cheap subset the runner applies before it measures anything.

Shapes are chosen so that a wrong layout cannot pass by accident: batch 2, heads 3, 12 tokens, head
dimension 8 — four different sizes — and layout is checked by independence (new inputs for one sequence,
one head or one query change that part of the output only), which holds for exact and approximate
attention alike, so it needs no reference values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .attention_interface import NonFiniteAttentionError, attention_function, attention_modules, check_finite
from .contract import ResolvedBackend

if TYPE_CHECKING:
    from ..devices import Placement

#: ``(batch, heads, seq, head_dim)`` of the kit's inputs: four different sizes.
SHAPE = (2, 3, 12, 8)
#: Valid lengths of the two sequences in padded checks.
LENGTHS = (12, 7)
#: Absolute tolerance (float32, inputs of unit scale) where a rule says "the same output".
ATOL = 1e-5
#: Share of a change's own effect that may leak into the rest of the output in the layout check.
LAYOUT_FRACTION = 0.05
#: Half-width of the sliding window: query ``i`` attends to keys ``j`` with ``|i - j| <= WINDOW``.
WINDOW = 2


@functools.lru_cache(maxsize=None)
def attention_module(device: str = "cpu") -> torch.nn.Module:
    """A BERT self-attention module (3 heads of dimension 8) to pass as ``module``, as a layer would."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=SHAPE[1] * SHAPE[3], num_hidden_layers=1,
                        num_attention_heads=SHAPE[1], intermediate_size=32, max_position_embeddings=64,
                        attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(config, add_pooling_layer=False).eval().to(device)
    return attention_modules(model)[0]


@dataclass(frozen=True)
class Inputs:
    """Makes q/k/v and masks on one device and dtype. q, k and v are non-contiguous
    ``(batch, heads, seq, head_dim)`` views of ``(batch, seq, heads, head_dim)`` tensors, as BERT passes them."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def qkv(self, seed: int = 0, shape: tuple[int, int, int, int] = SHAPE,
            scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, heads, seq, dim = shape
        gen = torch.Generator().manual_seed(seed)
        return tuple((scale * torch.randn(batch, seq, heads, dim, generator=gen)).to(self.device, self.dtype)
                     .transpose(1, 2) for _ in range(3))

    def mask(self, kind: str, attend: torch.Tensor) -> torch.Tensor:
        """``attend`` (batch, q_len, k_len) bool → a ``(batch, 1, q_len, k_len)`` mask of ``kind``."""
        attend = attend[:, None].to(self.device)
        if kind == "bool":
            return attend
        return torch.zeros(attend.shape, dtype=self.dtype, device=self.device).masked_fill(
            ~attend, torch.finfo(self.dtype).min)

    def padding(self, kind: str, lengths: tuple[int, ...] = LENGTHS, seq: int = SHAPE[2]) -> torch.Tensor:
        valid = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
        return self.mask(kind, valid[:, None, :].expand(len(lengths), seq, seq))

    def window(self, kind: str, lengths: tuple[int, ...] = LENGTHS, seq: int = SHAPE[2],
               window: int = WINDOW) -> torch.Tensor:
        """Padding and a sliding window: query ``i`` attends to valid keys ``j`` with ``|i - j| <= window``."""
        valid = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
        near = (torch.arange(seq)[:, None] - torch.arange(seq)[None, :]).abs() <= window
        return self.mask(kind, valid[:, None, :] & near[None])


def call(backend: ResolvedBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         mask: torch.Tensor | None = None, scaling: float | None = None) -> torch.Tensor:
    """The backend's attention through the harness's wiring; returns the output after checking the
    ``(output, weights)`` return form and the output's shape."""
    module = attention_module(str(q.device.type))
    result = attention_function(backend)(module, q, k, v, mask, scaling=scaling, dropout=0.0)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"output layout: attention must return a tuple (output, weights or None), "
                             f"got {type(result).__name__}")
    out, weights = result
    batch, heads, seq, dim = q.shape
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch, seq, heads, dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AssertionError(f"output layout: output must be (batch, q_len, heads, head_dim) = "
                             f"{(batch, seq, heads, dim)} for q of shape {tuple(q.shape)}, got {got}")
    if weights is not None and (not isinstance(weights, torch.Tensor)
                                or tuple(weights.shape) != (batch, heads, seq, seq)):
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise AssertionError(f"output layout: weights must be None or (batch, heads, q_len, k_len) = "
                             f"{(batch, heads, seq, seq)}, got {got}")
    return out


def _differ(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL, rtol: float = 0.0) -> str | None:
    """None when close; otherwise a short description of the largest difference."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    both_nan = actual.isnan() & expected.isnan()
    diff = (actual - expected).abs().masked_fill(both_nan, 0.0)
    bound = atol + rtol * expected.abs()
    bad = ~(diff <= bound)
    if not bad.any():
        return None
    worst = diff.masked_fill(~bad, -1).argmax()
    index = tuple(int(i) for i in torch.unravel_index(worst, diff.shape))
    return (f"{int(bad.sum())} of {bad.numel()} values differ, the largest by {float(diff.flatten()[worst]):.3g} "
            f"at output index {index} (tolerance {atol:g} + {rtol:g}·|expected|)")


# -- the checks -----------------------------------------------------------------------------------------------


def check_output_layout(backend: ResolvedBackend, inputs: Inputs) -> None:
    """``(output, weights)`` with output ``(batch, q_len, heads, head_dim)``; new q, k and v for one
    sequence change that sequence's output only, new q, k and v for one head change that head's output only,
    and a new query at one position changes that output row only (no reshape instead of a transpose, no
    mixing of sequences, heads or rows). Heads need not be alike (per-head parameters are fine)."""
    q, k, v = inputs.qkv()
    out = call(backend, q, k, v)
    eps = torch.finfo(q.dtype).eps if q.dtype.is_floating_point else 0.0
    fresh = inputs.qkv(seed=11)
    row = 5
    # (what changes, which inputs, input index, output index): output is (batch, q_len, heads, head_dim)
    cases = [("sequence 1", (0, 1, 2), (1,), (1,)),
             ("head 1", (0, 1, 2), (slice(None), 1), (slice(None), slice(None), 1)),
             (f"the query of token {row}", (0,), (slice(None), slice(None), row), (slice(None), row))]
    for what, which, in_index, out_index in cases:
        changed = [t.clone() for t in (q, k, v)]
        for i in which:
            changed[i][in_index] = fresh[i][in_index]
        moved = call(backend, *changed)
        target = torch.zeros(out.shape, dtype=torch.bool, device=out.device)
        target[out_index] = True
        signal = float((moved[target] - out[target]).abs().max())
        # An approximate backend's shared statistics (a quantization scale over heads or sequences) may move
        # the rest a little; a wrong layout moves it as much as the changed part itself.
        problem = _differ(moved.masked_fill(target, 0), out.masked_fill(target, 0),
                          atol=max(ATOL, 4 * eps, LAYOUT_FRACTION * signal))
        if problem or signal <= max(ATOL, 4 * eps):
            found = problem or f"the output of {what} did not change"
            raise AssertionError(f"output layout: new inputs for {what} must change the output of {what} only, in "
                                 f"(batch, q_len, heads, head_dim) = {tuple(out.shape)}: {found}. Return "
                                 "output.transpose(1, 2) of a (batch, heads, q_len, head_dim) result, not a "
                                 "reshape or view")


def check_output_dtype(backend: ResolvedBackend, inputs: Inputs, dtypes: tuple[torch.dtype, ...]) -> None:
    """For every declared dtype (``dtypes``): the output has the query's dtype and device, and is finite."""
    for dtype in dtypes:
        typed = Inputs(inputs.device, dtype)
        q, k, v = typed.qkv()
        out = call(backend, q, k, v, typed.padding(backend.mask_kind))
        name = str(dtype).removeprefix("torch.")
        if out.dtype != dtype:
            raise AssertionError(f"output dtype: for q, k, v in {name} (a declared dtype) the output must be "
                                 f"{name}, got {str(out.dtype).removeprefix('torch.')}")
        if out.device.type != q.device.type:
            raise AssertionError(f"output dtype: output on {out.device} for inputs on {q.device}; allocate on "
                                 "query.device")
        if not torch.isfinite(out).all():
            raise AssertionError(f"output dtype: finite {name} inputs gave NaN or infinity in the output")


def check_undeclared_dtypes_refused(backend: ResolvedBackend, inputs: Inputs,
                                    undeclared: tuple[torch.dtype, ...]) -> None:
    """q/k/v of an undeclared dtype, or of mixed dtypes, are refused with a ``TypeError`` naming the
    declared dtypes before the backend's attention is called."""
    part = backend.attention_part
    calls: list[torch.dtype] = []
    original = part.attention

    def spy(module, query, *args, **kwargs):
        calls.append(query.dtype)
        return original(module, query, *args, **kwargs)

    part.attention = spy  # the instance attribute shadows the method for attention_function
    try:
        fn = attention_function(backend)
        q, k, v = inputs.qkv()
        cases = [tuple(t.to(d) for t in (q, k, v)) for d in undeclared] + [(q, k.double(), v)]
        for case in cases:
            args = tuple(case)
            names = ", ".join(str(t.dtype).removeprefix("torch.") for t in args)
            refusal: Exception | None = None
            try:
                fn(attention_module(inputs.device), *args, None, scaling=None, dropout=0.0)
            except Exception as exc:
                refusal = exc
            if calls:
                raise AssertionError(f"undeclared dtypes refused: q, k, v of {names} were not refused: they "
                                     "reached the backend's attention (declared dtypes: "
                                     f"{', '.join(map(str, part.dtypes)) or 'none'})")
            if not isinstance(refusal, TypeError) or "dtype" not in str(refusal):
                raise AssertionError(f"undeclared dtypes refused: q, k, v of {names} must be refused with a "
                                     "TypeError that names the declared dtypes, got "
                                     f"{type(refusal).__name__}: {refusal}")
    finally:
        del part.attention


def check_padding(backend: ResolvedBackend, inputs: Inputs) -> None:
    """Padding never influences valid rows: garbage in the padded q, k and v of a sequence leaves the output
    rows of its valid queries unchanged (mask of the backend's ``mask_kind``)."""
    q, k, v = inputs.qkv()
    mask = inputs.padding(backend.mask_kind)
    out = call(backend, q, k, v, mask)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    length = LENGTHS[1]
    gen = torch.Generator().manual_seed(7)
    for t in (q2, k2):
        t[1, :, length:] = (50 * torch.randn(t[1, :, length:].shape, generator=gen)).to(t)
    v2[1, :, length:] = -50
    out2 = call(backend, q2, k2, v2, mask)
    problem = _differ(out2[:, :length], out[:, :length])
    if problem:
        raise AssertionError(f"padding: changing only the padded tokens of sequence 1 (valid length {length} of "
                             f"{SHAPE[2]}; {backend.mask_kind} mask) changed the output of valid rows: {problem}. "
                             "Masked keys must get zero weight and padded queries must not enter shared "
                             "statistics such as quantization scales")


def check_sliding_window(backend: ResolvedBackend, inputs: Inputs) -> None:
    """Masks other than padding are honoured: with a sliding-window mask, changing the keys and values a
    query may not attend to leaves that query's output row unchanged."""
    q, k, v = inputs.qkv()
    mask = inputs.window(backend.mask_kind)
    try:
        out = call(backend, q, k, v, mask)
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"sliding window: a (batch, 1, q_len, k_len) mask that differs between query rows "
                             f"(window ±{WINDOW}, {backend.mask_kind}) was refused with "
                             f"{type(exc).__name__}: {exc}; every mask of the backend's kind must be honoured")
    for row in (0, 5, SHAPE[2] - 1):
        outside = (torch.arange(SHAPE[2]) - row).abs() > WINDOW
        k2, v2 = k.clone(), v.clone()
        # negated keys and values keep every max-abs statistic (quantization scales) unchanged
        k2[:, :, outside] = -k2[:, :, outside]
        v2[:, :, outside] = -v2[:, :, outside]
        out2 = call(backend, q, k2, v2, mask)
        valid = [b for b, length in enumerate(LENGTHS) if row < length]   # a padded query row is ignored
        problem = _differ(out2[valid, row], out[valid, row])
        if problem:
            raise AssertionError(f"sliding window: with a window of ±{WINDOW} ({backend.mask_kind} mask), changing "
                                 f"keys and values outside query {row}'s window changed its output: {problem}. The "
                                 "mask differs between query rows: apply it per row, not as a key-padding mask")


def check_alone_equals_batched(backend: ResolvedBackend, inputs: Inputs) -> None:
    """A sequence gives the same output alone (no mask) as inside a padded batch."""
    q, k, v = inputs.qkv()
    out = call(backend, q, k, v, inputs.padding(backend.mask_kind))
    for index, length in enumerate(LENGTHS):
        alone = call(backend, *(t[index:index + 1, :, :length] for t in (q, k, v)))
        problem = _differ(out[index:index + 1, :length], alone)
        if problem:
            raise AssertionError(f"alone equals batched: sequence {index} (length {length}) computed alone "
                                 f"differs from its valid rows in a padded batch of {SHAPE[0]}: {problem}")


def check_scaling(backend: ResolvedBackend, inputs: Inputs) -> None:
    """Scores are ``(q · k) · scaling``: another ``scaling`` changes the output; doubling q while halving
    ``scaling`` does not; ``None`` means ``head_dim ** -0.5``."""
    q, k, v = inputs.qkv()
    mask = inputs.padding(backend.mask_kind)
    default = SHAPE[3] ** -0.5
    base = call(backend, q, k, v, mask, scaling=0.25)
    other = call(backend, q, k, v, mask, scaling=1.0)
    if _differ(other, base, atol=1e-3) is None:
        raise AssertionError("scaling: scaling=1.0 and scaling=0.25 gave the same output; the scaling argument "
                             "must multiply the scores q·k")
    problem = _differ(call(backend, 2 * q, k, v, mask, scaling=0.125), base)
    if problem:
        raise AssertionError(f"scaling: doubling q and halving scaling (0.25 → 0.125) changed the output: {problem}; "
                             "the scores must be (q · k) · scaling")
    problem = _differ(call(backend, q, k, v, mask, scaling=None), call(backend, q, k, v, mask, scaling=default))
    if problem:
        raise AssertionError(f"scaling: scaling=None must mean head_dim ** -0.5 = {default:.4g}: {problem}")


def _refused_saying_so(exc: Exception) -> bool:
    text = str(exc).lower()
    return isinstance(exc, NonFiniteAttentionError) or any(w in text for w in ("nan", "inf", "finite"))


def check_finiteness(backend: ResolvedBackend, inputs: Inputs) -> None:
    """A NaN or infinity in a real token's q, k or v never gives an all-finite output for that sequence (or
    the backend raises, saying so); finite inputs, even with large scores, give a finite output."""
    spec = backend.spec
    mask = inputs.padding(backend.mask_kind)
    for where in ("q", "k", "v"):
        for bad in (float("nan"), float("inf"), float("-inf")):
            q, k, v = (t.clone() for t in inputs.qkv(seed=3))
            {"q": q, "k": k, "v": v}[where][0, 1, 4, 5] = bad
            try:
                out = call(backend, q, k, v, mask)
            except AssertionError:
                raise
            except Exception as exc:
                if _refused_saying_so(exc):
                    continue
                raise AssertionError(f"finiteness: {bad} in {where} raised {type(exc).__name__}: {exc}; return a "
                                     "non-finite output, or raise an error that says NaN or infinity") from None
            try:
                check_finite(spec, q, k, v, mask, out)
            except NonFiniteAttentionError as exc:
                raise AssertionError(f"finiteness: {bad} in {where} of a real token of sequence 0: {exc}") from None
    q, k, v = inputs.qkv(seed=4, scale=30.0)
    out = call(backend, q, k, v, mask)
    if not torch.isfinite(out[0]).all() or not torch.isfinite(out[1, :LENGTHS[1]]).all():
        raise AssertionError("finiteness: finite q, k, v of scale 30 (scores in the hundreds) gave NaN or infinity "
                             "in valid rows; subtract each row's maximum score before the exponential")


def check_deterministic(backend: ResolvedBackend, inputs: Inputs) -> None:
    """The same inputs give the same output twice (bit for bit)."""
    q, k, v = inputs.qkv()
    mask = inputs.padding(backend.mask_kind)
    first, second = call(backend, q, k, v, mask), call(backend, q, k, v, mask)
    valid = torch.ones_like(first[..., 0, 0], dtype=torch.bool)
    valid[1, LENGTHS[1]:] = False
    if not torch.equal(first[valid], second[valid]):
        problem = _differ(second[valid], first[valid], atol=0.0)
        raise AssertionError(f"deterministic: the same inputs gave different outputs on a second call: {problem}")


def check_inputs_unchanged(backend: ResolvedBackend, inputs: Inputs) -> None:
    """The backend modifies neither q, k, v nor the mask."""
    q, k, v = inputs.qkv()
    mask = inputs.padding(backend.mask_kind)
    before = [t.clone() for t in (q, k, v, mask)]
    call(backend, q, k, v, mask)
    for name, original, now in zip(("query", "key", "value", "attention_mask"), before, (q, k, v, mask)):
        if not torch.equal(original, now):
            raise AssertionError(f"inputs unchanged: the backend modified its {name} in place; work on a copy")


def preflight(backend: ResolvedBackend, placement: Placement) -> list[str]:
    """The cheap checks the runner applies before it measures: output layout, output dtype and finite
    inputs giving finite outputs, on the run's device and dtype. Returns the broken rules (empty: none).

    A backend without an attention function has nothing to check here; one whose attention raises is left
    to fail in its cells, with its own error, as a backend that raises at any other point does."""
    if backend.attention_part is None:
        return []
    inputs = Inputs(str(placement.torch_device), placement.torch_dtype)
    failures = []
    for check in (check_output_layout, lambda b, i: check_output_dtype(b, i, (i.dtype,))):
        try:
            check(backend, inputs)
        except AssertionError as exc:
            failures.append(str(exc))
        except Exception:  # a backend that raises fails its own cells, with the reason, as it always has
            break
    return failures

