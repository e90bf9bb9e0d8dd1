"""torch's process-wide settings, kept as the run set them across every call into a plugin.

A backend's ``prepare`` or attention function can change settings that hold for the whole process —
``torch.set_num_threads(1)`` most often — and so change how every backend measured after it runs, while
the rows still record what the run asked for. The harness captures the settings before each call into a
plugin, restores any that changed, and records what the plugin had set (:func:`restorations`, merged into
the backend's ``extra`` facts), so the settings recorded are the settings measured.

Settings covered (:class:`TorchState`): intra-op threads, the default dtype, autograd, deterministic
algorithms, float32 matmul precision, and the oneDNN (mkldnn) and cuDNN switches. Inter-op threads
cannot be changed once parallel work has started, so a plugin cannot change them during a run.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Iterator

import torch


@dataclass(frozen=True)
class TorchState:
    """A snapshot of torch's process-wide settings (see the module docstring)."""

    num_threads: int
    default_dtype: torch.dtype
    grad_enabled: bool
    deterministic: bool
    matmul_precision: str
    mkldnn: bool
    cudnn: bool
    cudnn_benchmark: bool

    @classmethod
    def capture(cls) -> "TorchState":
        return cls(torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
                   torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision(),
                   torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark)

    def restore(self) -> None:
        """Set every setting back to this snapshot's value."""
        torch.set_num_threads(self.num_threads)
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)
        torch.use_deterministic_algorithms(self.deterministic)
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.backends.mkldnn.enabled = self.mkldnn
        torch.backends.cudnn.enabled = self.cudnn
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def changes(self, after: "TorchState") -> dict[str, tuple[object, object]]:
        """``{setting: (this value, the value after)}`` for every setting that differs."""
        return {f.name: (getattr(self, f.name), getattr(after, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(after, f.name)}


#: backend spec → {setting: what a call into the backend set it to, restored}; kept per process.
_RESTORED: dict[str, dict[str, str]] = {}


@contextmanager
def kept_torch_state(spec: str, call: str) -> Iterator[None]:
    """Run a call into backend ``spec``'s plugin (``call``: ``"prepare"``, ``"attention"``) and restore every
    setting of :class:`TorchState` it changed, recording the change (:func:`restorations`). The call's own
    exception, if any, propagates after the restore."""
    before = TorchState.capture()
    try:
        yield
    finally:
        after = TorchState.capture()
        if after != before:
            for name, (kept, set_to) in before.changes(after).items():
                _RESTORED.setdefault(spec, {})[name] = f"{call} set {_text(set_to)}; restored to {_text(kept)}"
            before.restore()


@contextmanager
def kept_threads(spec: str, call: str) -> Iterator[None]:
    """:func:`kept_torch_state` for the one setting cheap enough to check on every attention call: threads."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        now = torch.get_num_threads()
        if now != threads:
            _RESTORED.setdefault(spec, {})["num_threads"] = f"{call} set {now}; restored to {threads}"
            torch.set_num_threads(threads)


def restorations(spec: str) -> dict[str, str]:
    """What calls into backend ``spec`` changed and the harness restored in this process (``{}``: nothing)."""
    return dict(_RESTORED.get(spec, {}))


def _text(value: object) -> str:
    return str(value).removeprefix("torch.")
