"""Instruction counts under valgrind's callgrind: a speed signal without the machine's noise.

Every backend's attention core and whole forward at one small fixed shape (batch 1 × 128 tokens, one thread)
is measured in **one** valgrind process: :func:`measure_instructions` starts ``valgrind --tool=callgrind
--instr-atstart=no --collect-atstart=no python -m harness.execution.instructions …`` (this module's driver),
which imports torch and builds every speed case with valgrind's instrumentation *off* (about 5× slower than
native instead of about 50×), then samples the candidates through the one sampling API
(:func:`~harness.execution.sampling.time_interleaved`) with :class:`CallgrindClock`. The clock switches
instrumentation on only around each measured call (callgrind's ``START/STOP_INSTRUMENTATION`` client requests,
from a ten-line C helper compiled on first use), collects with torch's own toggles
(``torch._C._valgrind_toggle`` / ``_valgrind_toggle_and_dump_stats``, as ``torch.utils.benchmark``'s callgrind
support uses them) and reads the ``totals:`` line (``Ir``: instructions executed) of the dump that call wrote.

valgrind emulates no AVX-512: under it FBGEMM and torch dispatch to their AVX2 kernels whatever the host has;
the rows record the ISA that ran (``extra.isa``, ``extra.fbgemm_isa``). Where valgrind (or the client-request
helper) is missing, :func:`unavailable_reason` says why and no row is written — counts are never estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: The fixed shape and thread count of instruction-count rows.
BATCH_SIZE, SEQ_LEN, THREADS = 1, 128, 1
METRICS = {"forward": "instructions_forward", "attention_core": "instructions_attention_core"}
UNIT = "instructions"
CATEGORY = "instructions"

_HELPER_SOURCE = r"""
#include <valgrind/callgrind.h>
void attnbench_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void attnbench_cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
int attnbench_cg_running(void) { return RUNNING_ON_VALGRIND; }
"""


def valgrind_version() -> str | None:
    exe = shutil.which("valgrind")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.removeprefix("valgrind-") or None


def helper_library() -> Path | None:
    """The compiled client-request helper (cached under the attnbench cache), or ``None`` where it cannot be
    built (no C compiler, or no ``valgrind/callgrind.h``: Debian's ``valgrind`` package ships it)."""
    from ..paths import cache_dir

    target = cache_dir() / "callgrind" / "libattnbench_cg.so"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "cg.c"
        source.write_text(_HELPER_SOURCE)
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(built), str(source)],
                                capture_output=True, text=True)
        if result.returncode:
            return None
        os.replace(built, target)  # atomic: concurrent first uses never see half a library
    return target


def unavailable_reason() -> str | None:
    """Why instruction counts cannot be measured here (``None``: they can)."""
    if valgrind_version() is None:
        return "valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)"
    import torch

    if not (hasattr(torch._C, "_valgrind_supported_platform") and torch._C._valgrind_supported_platform()):
        return "this torch build has no callgrind client requests (torch._C._valgrind_supported_platform)"
    if helper_library() is None:
        return "cannot build the callgrind client-request helper (needs a C compiler and valgrind/callgrind.h)"
    return None


def read_dump_total(path: Path | str) -> int:
    """``Ir`` of one callgrind dump: its ``totals:`` line (or ``summary:``), first event."""
    totals = summary = None
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                totals = int(line.split()[1])
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
    value = totals if totals is not None else summary
    if value is None:
        raise ValueError(f"{path}: no totals in this callgrind dump")
    return value


@dataclass
class CallgrindClock:
    """A :class:`~harness.execution.sampling.Clock` counting instructions (``Ir``) per call under callgrind.

    Only usable inside ``valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no
    --callgrind-out-file=OUT``; ``out_file`` is that ``OUT`` (dumps are written to ``OUT.1``, ``OUT.2``, … in
    order). Each :meth:`measure` turns instrumentation on, collects exactly the ``number`` calls, dumps and
    turns instrumentation off again.
    """

    out_file: str
    helper: str
    name: str = "callgrind"
    unit: str = UNIT
    dumps: int = 0
    _lib: Any = field(default=None, repr=False)

    def _load(self):
        if self._lib is None:
            import ctypes

            self._lib = ctypes.CDLL(self.helper)
            if not self._lib.attnbench_cg_running():
                raise RuntimeError("CallgrindClock used outside valgrind")
        return self._lib

    def measure(self, fn: Callable[[], object], number: int) -> float:
        import torch

        lib = self._load()
        lib.attnbench_cg_start()
        torch._C._valgrind_toggle()
        for _ in range(number):
            fn()
        torch._C._valgrind_toggle_and_dump_stats()
        lib.attnbench_cg_stop()
        self.dumps += 1
        return read_dump_total(f"{self.out_file}.{self.dumps}") / number


# --- the driver: runs inside valgrind ------------------------------------------------------------------------

def _driver(args: argparse.Namespace) -> int:
    import torch

    from ..registry.registry import load_registry
    from ..models.loading import load_task_models
    from ..tasks.data import DataSource
    from ..tasks.encoding import encode
    from .eval_cells import prepare_model
    from .sampling import time_interleaved
    from .speed_cases import SPEED_TASK, build_speed_case, unavailable

    torch.set_num_threads(THREADS)
    registry = load_registry()
    task = registry.task(SPEED_TASK)
    models = load_task_models(args.model or None, [task])
    source = DataSource.parse("sample")
    encoded = encode(task, source.load(task), models.tokenizer(task), models.max_length(task))
    result: dict[str, Any] = {"skipped": {}, "counts": {}, "isa": torch.backends.cpu.get_cpu_capability(),
                              "model": models.name(task), "data_source": source.label}
    try:
        import cython_kernels

        result["fbgemm_isa"] = cython_kernels.cpu_features().get("isa")
    except Exception as exc:  # the kernels are optional for backends that do not use them
        result["fbgemm_isa"] = None
        result["fbgemm_error"] = f"{type(exc).__name__}: {exc}"
    candidates: dict[str, Callable[[], object]] = {}
    for spec in args.backend:
        reason = unavailable(registry, spec)
        if reason:
            result["skipped"][spec] = reason
            continue
        backend = registry.resolve(spec)
        case = build_speed_case(backend, models, task, encoded, batch_size=args.batch_size, seq_len=args.seq_len,
                                prepared=prepare_model(models.model(task), backend))
        for part in args.parts:
            if part == "forward" and args.forward_for and spec not in args.forward_for:
                continue
            candidates[f"{spec}\t{part}"] = getattr(case, part)
    clock = CallgrindClock(args.out_file, args.helper)
    timings = time_interleaved(candidates, repeats=args.repeats, warmup=1, clock=clock, number=1)
    for name, timing in timings.items():
        spec, part = name.split("\t")
        result["counts"].setdefault(spec, {})[part] = list(timing.samples)
    Path(args.result).write_text(json.dumps(result))
    return 0


# --- the parent: starts valgrind once for all backends ----------------------------------------------------------

@dataclass
class InstructionCounts:
    """What one valgrind process measured: ``counts[spec][part]`` = samples (instructions per call)."""

    counts: dict[str, dict[str, list[float]]]
    skipped: dict[str, str]
    isa: str | None
    fbgemm_isa: str | None
    valgrind: str | None
    wall_s: float
    batch_size: int = BATCH_SIZE
    seq_len: int = SEQ_LEN
    threads: int = THREADS
    model: str | None = None
    data_source: str | None = None
    cpu_s: float | None = None    # CPU seconds of the valgrind process (wall time depends on the neighbours)


class InstructionsUnavailable(RuntimeError):
    """valgrind (or what it needs) is missing: the reason, for skipping rows."""


def measure_instructions(specs: list[str], *, model: list[str] | None = None, repeats: int = 1,
                         parts: tuple[str, ...] = ("forward", "attention_core"), seq_len: int = SEQ_LEN,
                         batch_size: int = BATCH_SIZE, timeout: float = 3600, forward_for: list[str] | None = None,
                         log: Callable[[str], None] | None = None) -> InstructionCounts:
    """Count instructions of every spec's ``parts`` in one valgrind process.

    ``forward_for``: count the whole forward only for these specs (each forward costs about 1.5 min of CPU
    under callgrind on the embedded default; the attention cores cost seconds).

    :raises InstructionsUnavailable: valgrind or the client-request helper is missing (nothing measured).
    :raises RuntimeError: the driver failed under valgrind (its output tail in the message).
    """
    reason = unavailable_reason()
    if reason:
        raise InstructionsUnavailable(reason)
    helper = helper_library()
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", str(THREADS))
    with tempfile.TemporaryDirectory(prefix="attnbench-cg-") as tmp:
        out_file, result_file = f"{tmp}/callgrind.out", f"{tmp}/result.json"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                   f"--callgrind-out-file={out_file}", sys.executable, "-m", "harness.execution.instructions",
                   "--out-file", out_file, "--helper", str(helper), "--result", result_file,
                   "--repeats", str(repeats), "--seq-len", str(seq_len), "--batch-size", str(batch_size),
                   "--parts", *parts, "--backend", *specs]
        if forward_for:
            command += ["--forward-for", *forward_for]
        for m in model or []:
            command += ["--model", m]
        if log:
            log(f"counting instructions of {len(specs)} backend(s) under callgrind (one valgrind process)")
        start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        if proc.returncode or not Path(result_file).exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"callgrind driver failed (exit {proc.returncode}):\n{tail}")
        data = json.loads(Path(result_file).read_text())
    return InstructionCounts(data["counts"], data["skipped"], data.get("isa"), data.get("fbgemm_isa"),
                             valgrind_version(), wall, batch_size, seq_len, THREADS, data.get("model"),
                             data.get("data_source"), cpu)


def instruction_rows(counts: InstructionCounts, common: dict[str, Any], registry=None) -> list[dict[str, Any]]:
    """Rows of the results store (``category`` instructions, unit instructions, direction lower): the median
    of the samples as the value, every sample kept; the measured ISA in ``extra``. ``common`` holds the run
    fields (``process_fields``, run id, timestamp, …); ``threads`` is overridden with the counted thread."""
    from ..registry.registry import load_registry
    from .rows import row

    import numpy as np

    registry = registry or load_registry()
    out = []
    facts = {"clock": "callgrind", "isa": counts.isa, "fbgemm_isa": counts.fbgemm_isa,
             "valgrind": counts.valgrind, "event": "Ir"}
    for spec, parts in counts.counts.items():
        backend = registry.resolve(spec)
        for part, samples in parts.items():
            r = row({**common, "threads": counts.threads}, backend, CATEGORY, METRICS[part],
                    float(np.median(samples)), UNIT, "lower", samples=[float(s) for s in samples],
                    batch_size=counts.batch_size, seq_len=counts.seq_len, n_examples=counts.batch_size)
            extra = json.loads(r["extra"]) if r.get("extra") else {}
            r["extra"] = json.dumps({**extra, **facts}, sort_keys=True)
            out.append(r)
    return out


def run_instructions(specs: list[str], *, store: str | None, model: list[str] | None = None, repeats: int = 1,
                     run_id: str | None = None, parts: tuple[str, ...] = ("forward", "attention_core"),
                     log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Measure and (with ``store``) write instruction-count rows; returns ``(rows, skipped)``.

    Where valgrind is missing, nothing is measured and ``skipped`` maps every spec to the reason.
    """
    import uuid
    from datetime import datetime, timezone

    from ..registry.registry import load_registry
    from ..store.parquet import write_rows
    from ..provenance import machine_id
    from .rows import process_fields

    log = log or (lambda message: print(message, file=sys.stderr))
    try:
        counts = measure_instructions(specs, model=model, repeats=repeats, parts=parts, log=log)
    except InstructionsUnavailable as exc:
        log(f"skipping instruction counts: {exc}")
        return [], {spec: str(exc) for spec in specs}
    now = datetime.now(timezone.utc)
    run_id = run_id or f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    common = {**process_fields(THREADS), "run_id": run_id, "timestamp": now, "cell_id": "instructions",
              "model": counts.model, "data_source": counts.data_source, "task": None, "split": None}
    rows = instruction_rows(counts, common, load_registry())
    for spec, reason in counts.skipped.items():
        log(f"skipping instruction counts of {spec}: {reason}")
    log(f"instruction counts: {len(rows)} rows in {counts.wall_s:.0f} s ({counts.cpu_s:.0f} s CPU) of valgrind (ISA {counts.isa}, "
        f"FBGEMM {counts.fbgemm_isa})")
    if store is not None and rows:
        write_rows(store, rows, {"run_id": run_id, "timestamp": now.isoformat(), "machine": machine_id(),
                                 "kind": "instructions", "backends": specs, "wall_s": counts.wall_s, "cpu_s": counts.cpu_s,
                                 "argv": sys.argv})
    return rows, counts.skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="callgrind driver of attnbench (runs inside valgrind)")
    parser.add_argument("--out-file", required=True)
    parser.add_argument("--helper", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--parts", nargs="+", default=["forward", "attention_core"])
    parser.add_argument("--backend", nargs="+", required=True)
    parser.add_argument("--model", action="append")
    parser.add_argument("--forward-for", nargs="*", help="count the whole forward only of these specs")
    return _driver(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
