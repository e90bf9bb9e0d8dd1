"""``attnbench ab REV_A REV_B``: wall time of two git revisions measured alternately, process by process.

Each revision is exported (``git archive``) into its own directory; its compiled kernels are copied from this
checkout when its ``cython_kernels/`` sources are the same as this checkout's, and built in place otherwise
(``setup.py build_ext --inplace``). The environment is this one (same interpreter and libraries): only the
project's code differs, selected by ``PYTHONPATH``. Then ``pairs`` times: one measuring process of A and one
of B, in the order A B, B A, A B, … (so neither side always runs first). Every process times the same
backends' attention core and whole forward through the revision's own sampling API, interleaved, and
reports the median per candidate; each process's medians are one paired sample. The rows go to the store
(``plan_id`` = the session, ``run_id`` = ``<session>-A``/``-B``, ``cell_id`` = ``pair-<i>``, ``extra.ab``),
and :mod:`harness.analysis.ab` analyses them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..provenance import ROOT, git

#: Runs inside a measured revision (only its public ``harness.speed.speed_case`` and the sampling API).
SAMPLER = r'''
import json, sys, time
args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])
from harness.speed import speed_case
cases, skipped = {}, {}
for spec in args["backends"]:
    try:
        case = speed_case(spec, seq_len=args["seq_len"], batch_size=args["batch_size"], threads=args["threads"],
                          model=args.get("model"))
    except NotImplementedError as exc:
        skipped[spec] = str(exc)
        continue
    for part in args["parts"]:
        cases[spec + "\t" + part] = getattr(case, part)
try:
    from harness.execution.sampling import time_interleaved
    timings = time_interleaved(cases, repeats=args["repeats"], warmup=args["warmup"], number=None,
                               min_time=args["min_time"])
    samples = {name: list(t.samples) for name, t in timings.items()}
except ImportError:  # a revision before the sampling API
    samples = {name: [] for name in cases}
    for _ in range(args["warmup"]):
        for fn in cases.values():
            fn()
    for _ in range(args["repeats"]):
        for name, fn in cases.items():
            start = time.perf_counter(); fn(); samples[name].append(time.perf_counter() - start)
print("ATTNBENCH_AB " + json.dumps({"samples": samples, "skipped": skipped}))
'''

METRIC = {"forward": "latency_forward", "attention_core": "latency_attention_core"}


@dataclass
class Checkout:
    label: str       # "A" or "B"
    rev: str         # as given
    sha: str
    path: Path
    #: :func:`compiled_sources` of the revision
    sources: dict[str, str] = field(default_factory=dict)


#: What the compiled kernels are built from: a revision whose files of these kinds (and ``setup.py``) equal
#: this checkout's can reuse its built extensions; a change in a Python file of ``cython_kernels/`` cannot
#: change them.
COMPILED_SUFFIXES = (".pyx", ".pxd", ".pxi", ".h", ".hpp", ".c", ".cc", ".cpp")


def compiled_sources(rev: str | None) -> dict[str, str]:
    """``{path: blob id}`` of the files the extensions are compiled from (``cython_kernels/*`` of
    :data:`COMPILED_SUFFIXES`, and ``setup.py``), at revision ``rev`` or, with ``None``, in this checkout's
    working tree (generated ``.cpp`` files, which git ignores, are not counted)."""
    if rev is not None:
        listing = git("ls-tree", "-r", rev, "--", "cython_kernels", "setup.py", repo=ROOT).splitlines()
        entries = [line.split("\t", 1) for line in listing]
        return {path: meta.split()[2] for meta, path in entries if path == "setup.py" or path.endswith(COMPILED_SUFFIXES)}
    tracked = git("ls-files", "--", "cython_kernels", "setup.py", repo=ROOT).splitlines()
    paths = [p for p in tracked if (p == "setup.py" or p.endswith(COMPILED_SUFFIXES)) and (ROOT / p).is_file()]
    if not paths:
        return {}
    blobs = git("hash-object", "--", *paths, repo=ROOT).split()
    return dict(zip(paths, blobs))


def prepare_checkout(rev: str, label: str, parent: Path, log: Callable[[str], None],
                     reuse_from: Checkout | None = None) -> Checkout:
    """Export ``rev`` into ``parent/label`` with its kernels ready: copied from this checkout (or from
    ``reuse_from``, an export already built) when the sources they are compiled from are the same
    (:func:`compiled_sources`), built in place otherwise."""
    try:
        sha = git("rev-parse", "--verify", f"{rev}^{{commit}}", repo=ROOT).strip()
    except subprocess.CalledProcessError:
        raise UserError(f"unknown revision {rev!r}") from None
    target = parent / label
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    try:
        sources = compiled_sources(sha)
        here = compiled_sources(None)
    except (OSError, subprocess.SubprocessError):
        sources, here = {"unknown": label}, {}
    built = sorted((ROOT / "cython_kernels").glob("*.so"))
    donor = None
    if built and sources == here:
        donor = ROOT
    elif reuse_from is not None and sources == reuse_from.sources:
        donor = reuse_from.path
    if donor is not None:
        for so in sorted((donor / "cython_kernels").glob("*.so")):
            shutil.copy2(so, target / "cython_kernels" / so.name)
    else:
        log(f"building the kernels of {label} ({rev}) in place")
        build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=target,
                               capture_output=True, text=True, errors="replace")
        if build.returncode != 0:
            raise UserError(f"the kernels of {label} (revision {rev}, {sha[:10]}) do not compile: "
                            f"{compiler_message(build.stdout + build.stderr)}; nothing was measured. Fix them "
                            "there, or compare another revision")
    return Checkout(label, rev, sha, target, sources)


_COMPILER_ERROR = re.compile(r"^\S+\.(?:pyx|pxd|pxi|c|cc|cpp|cxx|h|hpp):\d+:\d+: (?:(?:fatal )?error: )?.+$")


def compiler_message(output: str) -> str:
    """The compiler's first error of a failed ``setup.py build_ext`` output, on one line: Cython's
    ``file.pyx:LINE:COL: message`` or a C/C++ compiler's ``file.cpp:LINE:COL: error: message``; else the
    output's last non-empty line (with the exit status, what is left to say)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if _COMPILER_ERROR.match(line) and "warning:" not in line]
    if errors:
        return errors[0]
    return lines[-1] if lines else "setup.py build_ext failed without output"


def sample_process(checkout: Checkout, settings: dict, timeout: float = 600) -> dict:
    """One measuring process of one revision: ``{"samples": {spec\\tpart: [...]}, "skipped": {...}}``."""
    env = {**os.environ, "PYTHONPATH": str(checkout.path), "OMP_NUM_THREADS": str(settings["threads"])}
    proc = subprocess.run([sys.executable, "-c", SAMPLER, json.dumps(settings)], cwd=checkout.path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("ATTNBENCH_AB "):
            return json.loads(line.removeprefix("ATTNBENCH_AB "))
    raise RuntimeError(f"measuring process of {checkout.label} ({checkout.rev}) failed (exit {proc.returncode}):\n"
                       f"{(proc.stdout + proc.stderr)[-2000:]}")


def run_ab(rev_a: str, rev_b: str, *, backends: list[str], parts: tuple[str, ...] = ("attention_core", "forward"),
           pairs: int = 20, repeats: int = 15, warmup: int = 2, min_time: float = 0.02, threads: int = 1,
           batch_size: int = 8, seq_len: int = 128, model: list[str] | None = None, store: str | None = None,
           log: Callable[[str], None] | None = None) -> tuple[str, list[dict]]:
    """Measure both revisions alternately; return ``(session id, rows)`` (rows also written to ``store``)."""
    from ..store.parquet import write_rows
    from .rows import process_fields

    log = log or (lambda message: print(message, file=sys.stderr))
    if pairs < 2:
        raise UserError("--pairs must be >= 2")
    if store is not None:
        from ..store.parquet import check_writable

        check_writable(store)  # before anything is built or measured
    now = datetime.now(timezone.utc)
    session = f"ab-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    settings = {"backends": backends, "parts": list(parts), "repeats": repeats, "warmup": warmup,
                "min_time": min_time, "threads": threads, "batch_size": batch_size, "seq_len": seq_len, "model": model}
    rows: list[dict] = []
    base = process_fields(threads)
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as tmp:
        first = prepare_checkout(rev_a, "A", Path(tmp), log)
        checkouts = {"A": first, "B": prepare_checkout(rev_b, "B", Path(tmp), log, reuse_from=first)}
        start = time.perf_counter()
        for pair in range(pairs):
            order = ("A", "B") if pair % 2 == 0 else ("B", "A")
            for position, side in enumerate(order):
                checkout = checkouts[side]
                result = sample_process(checkout, settings)
                stamp = datetime.now(timezone.utc)
                for name, samples in result["samples"].items():
                    spec, part = name.split("\t")
                    rows.append({**base, "commit": checkout.sha, "dirty": False, "run_id": f"{session}-{side}",
                                 "plan_id": session, "cell_id": f"pair-{pair}", "timestamp": stamp,
                                 "backend": spec, "backend_name": spec.split(":", 1)[0], "category": "speed",
                                 "metric": METRIC[part], "value": float(np.median(samples)), "unit": "s",
                                 "direction": "lower", "samples": [float(s) for s in samples],
                                 "batch_size": batch_size, "seq_len": seq_len, "n_examples": batch_size,
                                 "warmup": warmup, "model": ",".join(model) if model else "embedded",
                                 "task": None,
                                 "extra": json.dumps({"ab": {"session": session, "side": side, "pair": pair,
                                                             "position": position, "rev": checkout.rev}},
                                                     sort_keys=True)})
                for spec, reason in result["skipped"].items():
                    if pair == 0:
                        log(f"{side}: skipping {spec}: {reason}")
            log(f"pair {pair + 1}/{pairs} ({'/'.join(order)}) done, {time.perf_counter() - start:.0f} s")
    if store is not None and rows:
        write_rows(store, rows, {"run_id": session, "kind": "ab", "a": rev_a, "b": rev_b, "settings": settings,
                                 "machine": base["machine"], "timestamp": now.isoformat(), "argv": sys.argv})
    return session, rows
