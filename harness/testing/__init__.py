"""The plugin author's kit: every rule of the backend contract as a check a plugin's own test suite runs.

Two ways in, as scikit-learn's ``check_estimator`` and ``parametrize_with_checks``:

* :func:`check_backend` runs every check on one backend and raises one :class:`AssertionError` that names
  **each** check that failed and why::

      from harness.testing import check_backend
      check_backend("relu-attention")             # an installed backend, by spec string
      check_backend(MyBackend)                    # a Backend subclass, registered here for the checks
      check_backend("mine:k=4", registry=registry_with(MyBackend))   # other parameter values

* :func:`parametrize_with_checks` makes each (backend, check) pair its own pytest test id, so a failing
  suite shows which rule is broken::

      from harness.testing import parametrize_with_checks

      @parametrize_with_checks(["relu-attention", "relu-attention:causal=true"])
      def test_conformance(backend, check):
          check(backend)

The checks (:data:`CHECKS`, in order) run on small tensors and a tiny random BERT made here: nothing is
downloaded, and a backend takes seconds. A check that needs what this machine lacks (the backend's
:meth:`~harness.Backend.unavailable_reason`, or a device outside its ``devices``) is skipped with that reason.
A backend with no attention function (a whole-model transform only) skips the attention checks.

``expected_failed_checks`` maps check names to the reason each is known to fail; such a check must fail
(it is an ``xfail(strict=True)`` under pytest), so the entry is removed once the backend is fixed.
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Union

from ..backends.contract import Backend, ResolvedBackend, ask_unavailable_reason
from ..errors import UserError
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    import pytest

__all__ = ["CHECKS", "Check", "CheckResult", "CheckSkipped", "BackendUnderTest", "check_backend",
           "parametrize_with_checks", "registry_with"]

BackendLike = Union[str, type[Backend]]
ExpectedFailures = Union[Mapping[str, str], Iterable[str]]


class CheckSkipped(Exception):
    """Raised by a check that cannot run here; the message is the reason (shown as a pytest skip)."""


class BackendUnderTest:
    """One backend configuration to check: a spec string resolved in a registry (by default the built-ins
    and every installed plugin, loaded when a check first needs it). Build it with :meth:`of`."""

    def __init__(self, spec: str, registry: Any = None, *, registered_here: bool = False) -> None:
        self.spec = spec
        self._registry = registry
        self.registered_here = registered_here

    @property
    def registry(self) -> Any:
        return self._registry if self._registry is not None else _installed_registry()

    def __repr__(self) -> str:
        return f"<BackendUnderTest {self.spec}>"

    @classmethod
    def of(cls, backend: "BackendLike | BackendUnderTest", registry: Any = None) -> "BackendUnderTest":
        """From a spec string (resolved in ``registry``, default: the built-ins and every installed plugin)
        or from a :class:`~harness.Backend` subclass (registered, with the built-ins, in a registry of its
        own; its default parameter values are checked)."""
        if isinstance(backend, BackendUnderTest):
            return backend
        if isinstance(backend, str):
            return cls(backend, registry)
        if inspect.isclass(backend) and issubclass(backend, Backend):
            return cls(backend.name or backend.__name__, registry_with(backend), registered_here=True)
        raise TypeError(f"check a backend spec string or a harness.Backend subclass, not {backend!r}")

    @property
    def label(self) -> str:
        return self.spec

    def resolve(self) -> ResolvedBackend:
        """A freshly configured backend. :raises AssertionError: when the spec does not resolve (the
        registration failure, or the parameter error, is in the message)."""
        try:
            return self.registry.resolve(self.spec)
        except UserError as exc:
            failures = "; ".join(str(f) for f in self.registry.failures)
            raise AssertionError(f"registration: {exc}" + (f" (plugin failures: {failures})" if failures else "")) \
                from None

    def entry(self) -> Any:
        from ..backends.spec import parse_spec

        return self.registry.backends.get(parse_spec(self.spec)[0].name)

    def runnable(self) -> tuple[ResolvedBackend, str]:
        """The resolved backend and the device to run it on. :raises CheckSkipped: when unavailable here."""
        from ..devices import cuda_available

        backend = self.resolve()
        reason = backend.unavailable_reason()
        if reason:
            raise CheckSkipped(f"{self.spec} is unavailable here: {reason}")
        devices = backend.devices
        if "cpu" in devices:
            return backend, "cpu"
        if "cuda" in devices and cuda_available():
            return backend, "cuda"
        raise CheckSkipped(f"{self.spec} runs on {', '.join(devices) or 'no device'}; this machine has none of them")


class _ClassPlugin:
    """A plugin object that registers one Backend class (for :meth:`BackendUnderTest.of`)."""

    def __init__(self, cls: type[Backend]) -> None:
        self.cls = cls
        self.__name__ = f"check:{cls.__module__}.{cls.__qualname__}"

    @hookimpl
    def register_backends(self, register: Callable[[type[Backend]], None]) -> None:
        register(self.cls)


def registry_with(*classes: type[Backend]) -> Any:
    """A :class:`~harness.Registry` of the built-ins and ``classes``, registered as a plugin would register
    them (validated: name, parameters, mask kind). Check other parameter values of a class not yet installed
    with ``check_backend("mine:k=4", registry=registry_with(Mine))``."""
    from ..registry.registry import load_registry

    return load_registry(entry_points=False, extra_plugins=tuple(_ClassPlugin(c) for c in classes))


@functools.lru_cache(maxsize=1)
def _installed_registry() -> Any:
    from ..registry.registry import load_registry

    return load_registry()


@dataclass(frozen=True)
class Check:
    """One rule of the contract. Calling it with a backend runs the check: it returns when the rule holds,
    raises :class:`AssertionError` naming the rule when it is broken, and skips (``pytest.skip`` under
    pytest, :class:`CheckSkipped` otherwise) when it cannot run here."""

    name: str
    rule: str
    run: Callable[[BackendUnderTest], None] = field(repr=False)

    def __call__(self, backend: "BackendLike | BackendUnderTest") -> None:
        try:
            self.run(BackendUnderTest.of(backend))
        except CheckSkipped as exc:
            import sys

            if "pytest" in sys.modules:
                import pytest

                pytest.skip(str(exc))
            raise

    def __repr__(self) -> str:
        return f"<Check {self.name}>"


# -- the checks ---------------------------------------------------------------------------------------------


def _attention_check(fn: Callable[..., None]) -> Callable[[BackendUnderTest], None]:
    def run(subject: BackendUnderTest) -> None:
        from ..backends.conformance import Inputs

        backend, device = subject.runnable()
        part = backend.attention_part
        if part is None:
            raise CheckSkipped(f"{subject.spec} has no attention function (dense SDPA is used): nothing to check")
        fn(backend, Inputs(device, _main_dtype(part)))
    return run


def _main_dtype(part: Backend) -> Any:
    from ..devices import torch_dtypes
    import torch

    declared = torch_dtypes(part.dtypes)
    return torch.float32 if torch.float32 in declared else declared[0]


def _output_dtype(backend: ResolvedBackend, inputs: Any) -> None:
    from ..backends.conformance import check_output_dtype
    from ..devices import torch_dtypes

    check_output_dtype(backend, inputs, torch_dtypes(backend.attention_part.dtypes))


def _undeclared(backend: ResolvedBackend, inputs: Any) -> None:
    from ..backends.conformance import check_undeclared_dtypes_refused
    from ..devices import torch_dtypes
    import torch

    declared = torch_dtypes(backend.attention_part.dtypes)
    floats = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    check_undeclared_dtypes_refused(backend, inputs, tuple(d for d in floats if d not in declared) + (torch.int32,))


def _check_values(subject: BackendUnderTest) -> None:
    from ..errors import ParamError

    entry = subject.entry()
    if entry is None:
        subject.resolve()  # raises the registration error
    cls, base = entry.cls, subject.resolve().parts[0].values
    candidates: list[list[tuple[Any, bool]]] = []  # per parameter: (value, declared-valid)
    for p in cls.params:
        options: list[tuple[Any, bool]] = []
        if p.choices:
            options += [(c, True) for c in p.choices] + [("not-a-choice" if p.type is str else -987654, False)]
        elif p.type is bool:
            options += [(False, True), (True, True)]
        else:
            options.append((base[p.name], True))
            if p.min is not None:
                options += [(p.min, True), (p.min - 1, False)]
            if p.max is not None:
                options += [(p.max, True), (p.max + 1, False)]
        candidates.append(options)
    names = [p.name for p in cls.params]
    tried = 0
    for combo in itertools.islice(itertools.product(*candidates), 512):
        values = {name: value for name, (value, _) in zip(names, combo)}
        declared_ok = all(ok for _, ok in combo)
        tried += 1
        try:
            instance = cls(**values)
        except ParamError as exc:
            if not str(exc).strip():
                raise AssertionError(f"check values: {cls.name} refused {values} with an empty ParamError; say "
                                     "what is wrong and how to fix the spec") from None
            continue
        except Exception as exc:
            raise AssertionError(f"check values: {cls.name}({values}) raised {type(exc).__name__}: {exc}; refuse "
                                 "values that cannot apply with harness.ParamError (a message that says how to fix "
                                 "the spec)") from None
        if not declared_ok:
            raise AssertionError(f"check values: {cls.name} accepted {values}, outside the declared choices or "
                                 "range of its parameters")
        _ask_reason(cls, instance.values)
    try:
        cls(**{**base, "no_such_parameter": 1})
    except ParamError:
        pass
    except Exception as exc:
        raise AssertionError(f"check values: an unknown parameter raised {type(exc).__name__}: {exc}, not "
                             "harness.ParamError") from None
    else:
        raise AssertionError(f"check values: {cls.name} accepted an unknown parameter 'no_such_parameter'")


def _ask_reason(cls: type[Backend], values: Mapping[str, Any] | None) -> None:
    where = "for the backend as a whole" if values is None else f"for values {dict(values)}"
    try:
        reason = ask_unavailable_reason(cls, values)
    except Exception as exc:
        raise AssertionError(f"unavailable reason: raised {type(exc).__name__}: {exc} {where}; it must return a "
                             "string or None and never raise") from None
    if reason is not None and (not isinstance(reason, str) or not reason.strip() or "\n" in reason.strip()):
        raise AssertionError(f"unavailable reason: returned {reason!r} {where}; return None (available) or one "
                             "non-empty line saying what is missing")


def _unavailable_reason(subject: BackendUnderTest) -> None:
    backend = subject.resolve()
    for part in backend.parts:
        _ask_reason(type(part), None)
        _ask_reason(type(part), part.values)


def _tiny_classifier() -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=512, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3, attn_implementation="sdpa",
                        initializer_range=0.2)  # weights large enough that attention (and padding) matter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BertForSequenceClassification(config).eval()


def _model_inputs(device: str) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (2, 10), generator=gen)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return ids.to(device), mask.to(device)


def _prepare_keeps_outputs(subject: BackendUnderTest) -> None:
    import torch

    backend, device = subject.runnable()
    model = _tiny_classifier()
    ids, mask = _model_inputs("cpu")
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    prepared = backend.prepare(copy.deepcopy(model))
    if not isinstance(prepared, torch.nn.Module):
        raise AssertionError(f"prepare keeps outputs: returned {type(prepared).__name__}; return the model to evaluate")
    if prepared.training:
        raise AssertionError("prepare keeps outputs: the returned model is in training mode; keep it in eval()")
    with torch.inference_mode():
        after = prepared(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    shapes = lambda out: [tuple(out.logits.shape)] + [tuple(h.shape) for h in out.hidden_states]  # noqa: E731
    if shapes(after) != shapes(before):
        raise AssertionError(f"prepare keeps outputs: the model's outputs changed shape: logits and hidden states were "
                             f"{shapes(before)}, after prepare {shapes(after)}")
    if not torch.isfinite(after.logits).all():
        raise AssertionError("prepare keeps outputs: the prepared model gives NaN or infinite logits on finite inputs")


def _whole_model_padding(subject: BackendUnderTest) -> None:
    import torch
    from ..devices import Placement
    from ..execution.eval_cells import prepare_model

    backend, device = subject.runnable()
    base = _tiny_classifier()
    ids, mask = _model_inputs(device)
    placement = Placement(device, "float32") if device != "cpu" else None
    model = prepare_model(base, backend, placement)
    with torch.inference_mode():
        padded = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        alone = model(input_ids=ids[1:, :6], attention_mask=mask[1:, :6],
                      output_hidden_states=True).hidden_states[-1]
        unmasked = base.to(device)(input_ids=ids[1:], output_hidden_states=True).hidden_states[-1]
        reference = base(input_ids=ids[1:, :6], output_hidden_states=True).hidden_states[-1]
    error = float((padded[1:, :6] - alone).abs().max())
    if not any(type(p).prepare is not Backend.prepare for p in backend.parts):
        tolerance, why = 1e-4, ""
    else:
        # a whole-model transform may quantize activations with per-batch statistics, which padded tokens
        # enter: padding may move valid rows, by far less than ignoring the padding mask would
        signal = float((unmasked[:, :6] - reference).abs().max())
        tolerance, why = max(1e-4, 0.25 * signal), (f" (a quarter of the {signal:.3g} that attending to the padding "
                                                     "would cause, as the backend transforms the model)")
    if not error <= tolerance:
        raise AssertionError(f"whole model padding: through prepare() and the transformers wiring, a padded sequence's "
                             f"hidden states differ from the same sequence alone by {error:.3g} > {tolerance:.3g}"
                             f"{why}; register the attention with the mask_kind it implements")


def _distribution(subject: BackendUnderTest) -> None:
    from ..registry.manager import UNKNOWN

    subject.resolve()  # a spec that does not resolve fails here too, with the reason
    entry = subject.entry()
    from ..registry.manager import DEFAULT_PLUGINS

    info = entry.plugin
    # a plugin object registered directly (not through an entry point) is attributed to attnbench itself
    if subject.registered_here or (info.dist == "attnbench" and entry.cls.__module__ not in DEFAULT_PLUGINS):
        raise CheckSkipped(f"{subject.spec} is not registered through an installed distribution's entry point")
    missing = [what for what, value in (("name", info.dist), ("version", info.version)) if value == UNKNOWN]
    if missing:
        raise AssertionError(f"distribution: plugin {info.name!r} is installed from a distribution whose metadata "
                             f"has no {' and no '.join(missing)}; set [project] name and version in pyproject.toml "
                             "and reinstall (every result row records them)")


def _lazy(name: str) -> Callable[..., None]:
    def fn(*args: Any) -> None:
        from ..backends import conformance

        getattr(conformance, name)(*args)
    return fn


#: Every check, in the order :func:`check_backend` runs them.
CHECKS: tuple[Check, ...] = (
    Check("output_layout", "attention returns (output, weights); output is (batch, q_len, heads, head_dim): "
          "new inputs for one sequence, head or query change only that part of the output",
          _attention_check(_lazy("check_output_layout"))),
    Check("output_dtype", "for every declared dtype, the output has the query's dtype and device and is finite",
          _attention_check(_output_dtype)),
    Check("undeclared_dtypes_refused", "q, k, v of an undeclared or mixed dtype are refused with a TypeError by "
          "the harness's wiring before the backend is called", _attention_check(_undeclared)),
    Check("padding", "padding never influences valid rows (with the backend's mask kind)",
          _attention_check(_lazy("check_padding"))),
    Check("sliding_window", "masks other than padding (a sliding window) are honoured row by row",
          _attention_check(_lazy("check_sliding_window"))),
    Check("alone_equals_batched", "a sequence gives the same output alone and inside a padded batch",
          _attention_check(_lazy("check_alone_equals_batched"))),
    Check("scaling", "scores are (q·k)·scaling; None means head_dim ** -0.5",
          _attention_check(_lazy("check_scaling"))),
    Check("finiteness", "NaN or inf in a real token's q, k or v never gives an all-finite output; finite in, "
          "finite out", _attention_check(_lazy("check_finiteness"))),
    Check("deterministic", "the same inputs give the same output twice",
          _attention_check(_lazy("check_deterministic"))),
    Check("inputs_unchanged", "q, k, v and the mask are not modified",
          _attention_check(_lazy("check_inputs_unchanged"))),
    Check("check_values", "parameter values that cannot apply are refused with a ParamError", _check_values),
    Check("unavailable_reason", "unavailable_reason returns one line or None and never raises", _unavailable_reason),
    Check("prepare_keeps_outputs", "prepare returns an eval-mode model whose outputs keep their shapes",
          _prepare_keeps_outputs),
    Check("whole_model_padding", "through prepare and the transformers wiring, a padded sequence equals the same "
          "sequence alone", _whole_model_padding),
    Check("distribution", "the distribution that registers the backend has a name and a version", _distribution),
)

_BY_NAME = {c.name: c for c in CHECKS}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``status`` is ``"passed"``, ``"failed"``, ``"skipped"``,
    ``"expected failure"`` or ``"unexpectedly passed"``; ``message`` says why (empty when passed)."""

    check: str
    status: str
    message: str = ""


def _expected(expected: ExpectedFailures | None) -> dict[str, str]:
    if not expected:
        return {}
    table = dict(expected) if isinstance(expected, Mapping) else {name: "" for name in expected}
    unknown = sorted(set(table) - set(_BY_NAME))
    if unknown:
        raise ValueError(f"expected_failed_checks names unknown check(s) {', '.join(unknown)}; checks: "
                         f"{', '.join(_BY_NAME)}")
    return table


def check_backend(backend: "BackendLike", *, expected_failed_checks: ExpectedFailures = (),
                  registry: Any = None) -> list[CheckResult]:
    """Run every check of :data:`CHECKS` on one backend.

    :param backend: a spec string such as ``"mine:k=4"`` (resolved among the installed plugins, or in
        ``registry``), or a :class:`~harness.Backend` subclass not yet registered (checked with its default
        parameter values; for other values pass a spec and ``registry=registry_with(TheClass)``).
    :param expected_failed_checks: check names known to fail, each mapped to the reason (a mapping), or an
        iterable of names. Such a check must fail.
    :param registry: a :class:`~harness.Registry` to resolve spec strings in (default: built-ins and every
        installed plugin).
    :returns: one :class:`CheckResult` per check, in order, when nothing failed.
    :raises AssertionError: naming each check that failed (or passed although listed as expected to fail),
        with its reason, one per line.
    :raises ValueError: ``expected_failed_checks`` names a check that does not exist.
    """
    expected = _expected(expected_failed_checks)
    subject = BackendUnderTest.of(backend, registry)
    results = []
    for check in CHECKS:
        try:
            check.run(subject)
        except CheckSkipped as exc:
            results.append(CheckResult(check.name, "skipped", str(exc)))
        except Exception as exc:  # AssertionError, or an error the backend raised
            message = str(exc) if isinstance(exc, AssertionError) else f"raised {type(exc).__name__}: {exc}"
            status = "expected failure" if check.name in expected else "failed"
            results.append(CheckResult(check.name, status, message))
        else:
            status = "unexpectedly passed" if check.name in expected else "passed"
            results.append(CheckResult(check.name, status, "" if status == "passed" else
                                       f"listed in expected_failed_checks ({expected[check.name]}) but passed; "
                                       "remove it from the list"))
    bad = [r for r in results if r.status in ("failed", "unexpectedly passed")]
    if bad:
        lines = [f"{subject.label}: {len(bad)} of {len(CHECKS)} conformance checks failed:"]
        lines += [f"  {r.check}: {_without_rule(r.check, r.message)}" for r in bad]
        raise AssertionError("\n".join(lines))
    return results


def _without_rule(check: str, message: str) -> str:
    """The message without its leading rule name (``"padding: ..."`` → ``"..."``), which the line already shows."""
    head, sep, rest = message.partition(": ")
    return rest if sep and head.replace(" ", "_") == check else message


def parametrize_with_checks(
        backends: Iterable["BackendLike"], *,
        expected_failed_checks: "Callable[[str], ExpectedFailures] | Mapping[str, ExpectedFailures] | None" = None,
        registry: Any = None) -> "pytest.MarkDecorator":
    """A ``pytest.mark.parametrize`` over (backend, check) pairs, one test id per pair
    (``"topk:k=4-padding"``); decorate a test taking ``backend`` and ``check`` that calls ``check(backend)``.

    :param backends: spec strings or :class:`~harness.Backend` subclasses, as for :func:`check_backend`.
    :param expected_failed_checks: per backend label (its spec, or a class's ``name``), the checks known to
        fail with their reasons: a mapping ``{label: {check: reason}}`` or a callable ``label -> {check:
        reason}``. They become ``xfail(strict=True)``.
    :param registry: a :class:`~harness.Registry` to resolve spec strings in (default: built-ins and every
        installed plugin, loaded when the first test runs).
    """
    import pytest

    params = []
    for item in backends:
        subject = _deferred(item, registry)
        if callable(expected_failed_checks):
            expected = _expected(expected_failed_checks(subject.label))
        else:
            expected = _expected((expected_failed_checks or {}).get(subject.label))
        for check in CHECKS:
            marks = [pytest.mark.xfail(strict=True, reason=expected[check.name] or "expected to fail")] \
                if check.name in expected else []
            params.append(pytest.param(subject, check, id=f"{subject.label}-{check.name}", marks=marks))
    return pytest.mark.parametrize("backend, check", params)


def _deferred(item: "BackendLike", registry: Any) -> BackendUnderTest:
    return BackendUnderTest(item, registry) if isinstance(item, str) else BackendUnderTest.of(item, registry)
