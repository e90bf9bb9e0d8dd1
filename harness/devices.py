"""Where a run computes: the device (``cpu``, ``cuda``, ``cuda:N``) and the floating dtype of model and inputs.

A :class:`Placement` is parsed once from ``--device`` / ``--dtype`` (:func:`parse_placement`, which refuses a
CUDA device that this machine does not have, with one line). Backends declare the device types they run on
(``Backend.devices``, default ``("cpu",)``) and the dtypes their attention accepts (``Backend.dtypes``);
:func:`placement_reason` says why a configured backend cannot run at a placement, and
``ResolvedBackend.unavailable_reason(placement=...)`` asks it before the backend's own ``unavailable_reason``,
so the harness has one availability path.

The device is recorded on every row in two setting columns, ``device`` and ``dtype`` (schema 4): ``device``
is ``"cpu"`` or ``"cuda:<GPU name>"``, so rows of different GPU models never pair, while the machine
identity (host + CPU) stays what it was. :func:`device_facts` (GPU name, memory, capability, driver, CUDA
and cuDNN versions) goes to the descriptive ``device_info`` column.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where a tensor is touched, so that listings stay torch-free
    import torch

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")  # --dtype choices (torch dtype names)
DEFAULT_DEVICE, DEFAULT_DTYPE = "cpu", "float32"
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def dtype_name(dtype: "torch.dtype | str") -> str:
    """``"float32"`` for ``torch.float32`` or ``"float32"``: the name backends declare and rows record."""
    return str(dtype).removeprefix("torch.")


def dtype_names(declared: Any) -> tuple[str, ...]:
    """The dtype names a backend declares in ``dtypes`` (names or ``torch.dtype`` objects; default float32)."""
    return tuple(dtype_name(d) for d in (declared or (DEFAULT_DTYPE,)))


def torch_dtypes(declared: Any) -> "tuple[torch.dtype, ...]":
    """The ``torch.dtype`` objects of :func:`dtype_names` (imports torch).

    :raises TypeError: a declared name that is not a torch dtype.
    """
    import torch

    dtypes = []
    for name in dtype_names(declared):
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtypes: {name!r} is not a torch dtype (declare names such as 'float32', 'bfloat16')")
        dtypes.append(dtype)
    return tuple(dtypes)


@dataclass(frozen=True)
class Placement:
    """A validated device and dtype (picklable: plain strings)."""

    device: str = DEFAULT_DEVICE   # "cpu", "cuda:N"
    dtype: str = DEFAULT_DTYPE     # a key of DTYPES

    @property
    def torch_device(self) -> "torch.device":
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> "torch.dtype":
        return torch_dtypes((self.dtype,))[0]

    @property
    def device_type(self) -> str:
        return self.device.partition(":")[0]

    @property
    def is_cuda(self) -> bool:
        return self.device_type == "cuda"

    @property
    def is_default(self) -> bool:
        """CPU float32: the placement of every run before devices existed (nothing is moved or cast)."""
        return self.device == DEFAULT_DEVICE and self.dtype == DEFAULT_DTYPE

    def with_dtype(self, dtype: str) -> "Placement":
        return Placement(self.device, dtype)

    def label(self) -> str:
        """The ``device`` column: ``"cpu"``, or ``"cuda:<GPU name>"`` (the model, not the slot)."""
        if not self.is_cuda:
            return "cpu"
        import torch

        return f"cuda:{torch.cuda.get_device_name(self.torch_device)}"

    def row_fields(self) -> dict[str, Any]:
        """The columns every row measured at this placement carries."""
        facts = device_facts(self.device) if self.is_cuda else None
        return {"device": self.label(), "dtype": self.dtype,
                "device_info": json.dumps(facts, sort_keys=True) if facts else None}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_placement(device: str = DEFAULT_DEVICE, dtype: str = DEFAULT_DTYPE, *,
                    cuda_check: Callable[[], bool] = cuda_available,
                    cuda_count: Callable[[], int] | None = None) -> Placement:
    """Validate ``--device`` and ``--dtype``.

    :raises UserError: a malformed device, an unknown dtype, ``cuda`` where this torch or machine has no
        CUDA device, or a device index out of range (one line each).
    """
    match = _DEVICE.match(device.strip().lower()) if isinstance(device, str) else None
    if not match:
        raise UserError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise UserError(f"--device {device!r}: the CPU has no index; use cpu")
        return Placement("cpu", dtype)
    import torch

    if not cuda_check():
        build = torch.version.cuda
        why = ("this torch build has no CUDA support (a CPU-only wheel)" if build is None
               else f"torch (CUDA {build}) finds no usable CUDA device on this machine")
        raise UserError(f"--device {device}: {why}; run with --device cpu, or on a machine with an NVIDIA GPU")
    count = (cuda_count or torch.cuda.device_count)()
    number = int(index or 0)
    if number >= count:
        raise UserError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return Placement(f"cuda:{number}", dtype)


def backend_devices(obj: Any) -> tuple[str, ...]:
    """The device types a backend class or instance declares (``("cpu",)`` when it declares none)."""
    devices = getattr(obj, "devices", None)
    return tuple(devices) if devices else (DEFAULT_DEVICE,)


def placement_reason(part: Any, placement: Placement) -> str | None:
    """Why a backend (class or configured instance) cannot run at ``placement``, or ``None``.

    Device: its device type must be among ``devices``. Dtype: a backend with an attention function must
    accept the dtype (``dtypes``); a whole-model transform only (no attention function) must list it too,
    because it transforms a model of that dtype.
    """
    devices = backend_devices(part)
    if placement.device_type not in devices:
        return (f"runs on {', '.join(devices)} only, not {placement.device_type} (it declares devices="
                f"{devices!r})")
    dtypes = dtype_names(getattr(part, "dtypes", None))
    if placement.dtype not in dtypes:
        return f"takes {', '.join(dtypes)} only, not {placement.dtype} (run it with --dtype {dtypes[0]})"
    return None


def move_batch(batch: Mapping[str, torch.Tensor], placement: Placement | None) -> dict[str, torch.Tensor]:
    """Input tensors on the placement's device (token ids and masks keep their integer dtype)."""
    if placement is None or placement.device == DEFAULT_DEVICE:
        return dict(batch)
    return {name: value.to(placement.torch_device, non_blocking=True) for name, value in batch.items()}


def place_model(model: torch.nn.Module, placement: Placement | None) -> torch.nn.Module:
    """``model.to(device, dtype)`` (floating parameters and buffers only); untouched at the default placement."""
    if placement is None or placement.is_default:
        return model
    return model.to(device=placement.torch_device, dtype=placement.torch_dtype)


def synchronize(placement: Placement | None) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if placement is not None and placement.is_cuda:
        import torch

        torch.cuda.synchronize(placement.torch_device)


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str) -> float:
    """Peak bytes allocated by PyTorch's CUDA allocator during ``fn()``, above the level before it
    (``reset_peak_memory_stats``, then ``max_memory_allocated``)."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - before)


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int) -> float:
    """Floating-point operations of dense attention per call: ``4·B·H·S²·D`` (Q·Kᵀ and P·V, 2 per MAC;
    softmax not counted). Sparse backends are reported against this dense-equivalent figure."""
    return 4.0 * batch * heads * seq_len * seq_len * head_dim


@lru_cache(maxsize=None)
def device_facts(device: str) -> dict[str, Any] | None:
    """GPU name, memory, compute capability, driver, CUDA and cuDNN versions of a CUDA device (``None`` on CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(dev)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"name": props.name, "index": dev.index or 0, "memory_bytes": int(props.total_memory),
            "capability": f"{props.major}.{props.minor}", "multiprocessors": int(props.multi_processor_count),
            "driver": _driver_version(), "cuda": torch.version.cuda, "cudnn": cudnn}


def _driver_version() -> str | None:
    """The NVIDIA driver version (``nvidia-smi``), or ``None`` where it cannot be asked."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None
