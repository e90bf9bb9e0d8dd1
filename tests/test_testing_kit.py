"""The plugin kit itself: a backend that breaks one rule fails the kit with a message naming that rule;
failures are all reported at once; expected failures are strict; unavailable backends skip with their own
reason; the runner refuses a backend that breaks the cheap checks before measuring anything."""

from __future__ import annotations

import re

import pytest
import torch

from harness import Backend, Param, RunSpec, hookimpl, load_registry, run
from harness.backends import conformance
from harness.backends.contract import PluginInfo
from harness.registry.registry import BackendEntry, Registry
from harness.errors import UserError
from harness.testing import CHECKS, CheckSkipped, check_backend, parametrize_with_checks, registry_with


class Eager(Backend):
    """Correct softmax attention written out in torch: every broken backend below changes one thing."""

    name = "kit-eager"
    description = "eager attention"
    dtypes = ("float32", "float64")

    def scores(self, query, key, scaling):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return torch.matmul(query, key.transpose(-1, -2)) * scale

    def softmax(self, scores):
        return torch.softmax(scores, dim=-1)

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scores = self.scores(query, key, scaling)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        return self.finish(torch.matmul(self.softmax(scores), value)), None

    def finish(self, out):
        return out.transpose(1, 2)


def failed_checks(backend, **kwargs) -> dict[str, str]:
    """{check name: message} of the checks ``check_backend`` reports as failed."""
    with pytest.raises(AssertionError) as info:
        check_backend(backend, **kwargs)
    text = str(info.value)
    return dict(re.findall(r"^  (\w+): (.*)$", text, flags=re.M))


def test_a_correct_backend_passes_every_check():
    results = check_backend(Eager)
    assert [r.check for r in results] == [c.name for c in CHECKS]
    assert {r.check: r.status for r in results if r.status != "passed"} == {"distribution": "skipped"}


class PerHeadBias(Eager):
    """ALiBi-like: each head has its own distance penalty, so heads are not interchangeable."""

    name = "kit-per-head"

    def scores(self, query, key, scaling):
        seq, heads = query.shape[2], query.shape[1]
        distance = (torch.arange(seq)[:, None] - torch.arange(seq)[None, :]).abs()
        slopes = 2.0 ** -torch.arange(1, heads + 1, dtype=query.dtype)
        return super().scores(query, key, scaling) - slopes[:, None, None] * distance


def test_a_backend_whose_heads_differ_passes():
    assert {r.status for r in check_backend(PerHeadBias) if r.check != "distribution"} == {"passed"}


class WrongLayout(Eager):
    name = "kit-layout"

    def finish(self, out):  # a view, not a transpose: same shape, heads and tokens mixed
        return out.reshape(out.shape[0], out.shape[2], out.shape[1], out.shape[3])


class WrongDtype(Eager):
    name = "kit-dtype"

    def finish(self, out):
        return out.transpose(1, 2).float()


class IgnoresPadding(Eager):
    name = "kit-padding"

    def scores(self, query, key, scaling):  # quantizes q with a scale that padded tokens enter
        scale = query.abs().amax(dim=(1, 2, 3), keepdim=True) / 7
        return super().scores(torch.round(query / scale) * scale, key, scaling)


class KeyPaddingOnly(Eager):
    name = "kit-window"

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if attention_mask is not None:  # reads the mask as key padding: the keys any query attends to
            attention_mask = attention_mask.any(dim=2, keepdim=True).expand_as(attention_mask)
        return super().attention(module, query, key, value, attention_mask, scaling)


class BatchDependent(Eager):
    name = "kit-batch"

    def finish(self, out):
        return out.transpose(1, 2) + 1e-3 * out.shape[0]


class IgnoresScaling(Eager):
    name = "kit-scaling"

    def scores(self, query, key, scaling):
        return super().scores(query, key, None)


class NoneIsOne(Eager):
    name = "kit-scaling-none"

    def scores(self, query, key, scaling):
        return super().scores(query, key, 1.0 if scaling is None else scaling)


class SwallowsNaN(Eager):
    name = "kit-nan"

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        query, key, value = (torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=-1.0) for t in (query, key, value))
        return super().attention(module, query, key, value, attention_mask, scaling)


class NaiveSoftmax(Eager):
    name = "kit-overflow"

    def softmax(self, scores):  # no max subtraction: large finite scores overflow
        e = scores.exp()
        return e / e.sum(dim=-1, keepdim=True)


class Noisy(Eager):
    name = "kit-noisy"

    def finish(self, out):
        return out.transpose(1, 2) + 1e-4 * torch.rand_like(out.transpose(1, 2))


class ScalesInPlace(Eager):
    name = "kit-in-place"

    def scores(self, query, key, scaling):
        query.mul_(query.shape[-1] ** -0.5 if scaling is None else scaling)
        return torch.matmul(query, key.transpose(-1, -2))


class BadCheckValues(Eager):
    name = "kit-check-values"
    params = (Param("mode", str, "a", "a or b", choices=("a", "b")),)

    def check_values(self):
        assert self.values["mode"] == "a", "mode b is not implemented"


class RaisingReason(Eager):
    name = "kit-reason"

    @classmethod
    def unavailable_reason(cls, values=None):
        raise RuntimeError("cannot tell")


class FalseReason(Eager):
    name = "kit-reason-false"

    @classmethod
    def unavailable_reason(cls, values=None):
        return False


class ChangesOutputs(Eager):
    name = "kit-prepare"

    def prepare(self, model):
        model.classifier = torch.nn.Linear(model.classifier.in_features, 1)
        return model


class TrainingMode(Eager):
    name = "kit-train"

    def prepare(self, model):
        return model.train()


class LeaksPadding(Eager):
    name = "kit-model-padding"

    def prepare(self, model):  # a batch statistic over all tokens, padding included
        model.bert.embeddings.register_forward_hook(lambda m, args, out: out + out.mean(dim=(0, 1)) * 5)
        return model


BROKEN = [(WrongLayout, "output_layout"), (WrongDtype, "output_dtype"), (IgnoresPadding, "padding"),
          (KeyPaddingOnly, "sliding_window"), (BatchDependent, "alone_equals_batched"),
          (IgnoresScaling, "scaling"), (NoneIsOne, "scaling"), (SwallowsNaN, "finiteness"),
          (NaiveSoftmax, "finiteness"), (Noisy, "deterministic"), (ScalesInPlace, "inputs_unchanged"),
          (BadCheckValues, "check_values"), (RaisingReason, "unavailable_reason"),
          (FalseReason, "unavailable_reason"), (ChangesOutputs, "prepare_keeps_outputs"),
          (TrainingMode, "prepare_keeps_outputs"), (LeaksPadding, "whole_model_padding")]


@pytest.mark.parametrize("cls, rule", BROKEN, ids=[f"{c.name}-{r}" for c, r in BROKEN])
def test_a_backend_breaking_one_rule_fails_naming_it(cls, rule):
    failed = failed_checks(cls)
    assert rule in failed, failed
    assert "registration" not in failed[rule] and len(failed[rule]) > 20


def test_each_broken_backend_breaks_only_what_it_breaks():
    """Failures are precise: a backend with one fault that no other rule sees is reported under that rule only."""
    assert set(failed_checks(WrongDtype)) == {"output_dtype"}
    assert set(failed_checks(IgnoresScaling)) == {"scaling"}
    assert set(failed_checks(KeyPaddingOnly)) == {"sliding_window"}
    assert set(failed_checks(BadCheckValues)) == {"check_values"}
    assert "mode b is not implemented" in failed_checks(BadCheckValues)["check_values"]


def test_undeclared_dtypes_check_fails_when_the_wiring_lets_them_through(monkeypatch):
    monkeypatch.setattr(conformance, "attention_function", lambda backend: backend.attention_part.attention)
    failed = failed_checks(Eager)
    assert "undeclared_dtypes_refused" in failed
    assert "float16" in failed["undeclared_dtypes_refused"] and "not refused" in failed["undeclared_dtypes_refused"]


def test_distribution_without_version_fails():
    registry = Registry(backends={"kit-eager": BackendEntry(Eager, PluginInfo("kit", "attnbench-kit", None))})
    failed = failed_checks("kit-eager", registry=registry)
    assert set(failed) == {"distribution"}
    assert "no version" in failed["distribution"] and "pyproject.toml" in failed["distribution"]


def test_every_failure_is_reported_not_only_the_first():
    class TwoFaults(IgnoresScaling):
        name = "kit-two"

        def finish(self, out):
            return out.transpose(1, 2).float()

    assert set(failed_checks(TwoFaults)) == {"scaling", "output_dtype"}


def test_expected_failures_are_strict():
    results = check_backend(KeyPaddingOnly, expected_failed_checks={"sliding_window": "key padding only"})
    assert {r.check: r.status for r in results}["sliding_window"] == "expected failure"
    failed = failed_checks(Eager, expected_failed_checks={"padding": "thought broken"})
    assert set(failed) == {"padding"} and "remove it" in failed["padding"]
    with pytest.raises(ValueError, match="unknown check.*no_such_check"):
        check_backend(Eager, expected_failed_checks=["no_such_check"])


class Causal(Eager):
    name = "kit-causal"
    params = (Param("causal", bool, False, "attend to earlier tokens only"),)

    def scores(self, query, key, scaling):
        scores = super().scores(query, key, scaling)
        if self.values["causal"]:
            later = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
            scores = scores.masked_fill(later, float("-inf"))
        return scores


def test_other_parameter_values_of_a_class_not_yet_installed():
    results = check_backend("kit-causal:causal=true", registry=registry_with(Causal))
    assert {r.check: r.status for r in results if r.status != "passed"} == {"distribution": "skipped"}
    failed = failed_checks("kit-causal:causal=maybe", registry=registry_with(Causal))
    assert set(failed) == {c.name for c in CHECKS}
    assert all("registration: kit-causal" in m and "maybe" in m for m in failed.values())


class Unavailable(Eager):
    name = "kit-unavailable"

    @classmethod
    def unavailable_reason(cls, values=None):
        return "needs the frobnicator extension: pip install frobnicator"


def test_unavailable_backend_skips_with_its_own_reason():
    results = check_backend(Unavailable)
    skipped = {r.check: r.message for r in results if r.status == "skipped"}
    assert "padding" in skipped and "whole_model_padding" in skipped
    assert all("frobnicator" in m for name, m in skipped.items() if name != "distribution")
    # the checks that ask no computation still run
    assert {r.check for r in results if r.status == "passed"} == {"check_values", "unavailable_reason"}
    with pytest.raises(CheckSkipped, match="frobnicator"):
        CHECKS[0].run(__import__("harness.testing", fromlist=["x"]).BackendUnderTest.of(Unavailable))


def test_a_spec_that_does_not_resolve_fails_every_check_with_the_reason():
    failed = failed_checks("no-such-backend", registry=load_registry(entry_points=False))
    assert set(failed) == {c.name for c in CHECKS}
    assert all("unknown backend 'no-such-backend'" in m for m in failed.values())


@parametrize_with_checks([Eager, "dense:impl=eager"], registry=load_registry(entry_points=False),
                         expected_failed_checks={"kit-eager": {}})
def test_parametrize_with_checks_runs_one_test_per_check(backend, check):
    check(backend)


def test_parametrize_with_checks_ids_and_marks():
    mark = parametrize_with_checks(["dense"], expected_failed_checks={"dense": {"padding": "why"}})
    params = mark.args[1]
    assert [p.id for p in params] == [f"dense-{c.name}" for c in CHECKS]
    xfails = [p for p in params if p.marks]
    assert [p.id for p in xfails] == ["dense-padding"]
    assert xfails[0].marks[0].kwargs == {"strict": True, "reason": "why"}


class Layout:
    """A plugin module stand-in registering the wrong-layout backend."""

    @hookimpl
    def register_backends(self, register):
        register(WrongLayout)


def test_run_refuses_a_backend_that_breaks_the_cheap_checks_before_measuring(tmp_path):
    registry = load_registry(entry_points=False, extra_plugins=(Layout(),))
    store = tmp_path / "store"
    with pytest.raises(UserError) as info:
        run(RunSpec(backends=["dense", "kit-layout"], tasks=["mrpc"], limit=4, store=str(store), progress=False),
            registry=registry, log=lambda message: None)
    message = str(info.value)
    assert "\n" not in message
    assert "'kit-layout' breaks the backend contract (output layout:" in message and "nothing measured" in message
    assert "dense" not in message.split("nothing measured")[1].split("kit-layout")[0]
    assert not store.exists() or not any(store.rglob("*.parquet"))
