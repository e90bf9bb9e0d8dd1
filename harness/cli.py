"""The ``attnbench`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError
from .paths import DEFAULT_STORE

EXIT_USAGE = 2


def _registry():
    from .backends.registry import load_registry

    return load_registry()


def cmd_backends(args: argparse.Namespace) -> int:
    from .listing_cache import cached_listing

    if _checks_availability(args):
        text = _backends_text(args)[0]
    else:
        text = cached_listing("backends-json" if args.json else "backends", lambda: _backends_text(args),
                              refresh=args.refresh)
    print(text, end="")
    return 0


def _checks_availability(args: argparse.Namespace) -> bool:
    """``--check``, or a device or dtype to check on: availability is asked, never cached."""
    return bool(args.check or args.device or args.dtype)


def _backends_text(args: argparse.Namespace) -> tuple[str, bool]:
    from .backends.contract import ask_unavailable_reason
    from .devices import backend_devices, dtype_name, parse_placement, placement_reason

    placement = parse_placement(args.device or "cpu", args.dtype or "float32")
    check = _checks_availability(args)
    registry = _registry()
    listing = []
    for name in sorted(registry.backends):
        entry = registry.backends[name]
        # the class's declared devices and dtypes first (instances may narrow them per parameter)
        reason = (placement_reason(entry.cls, placement) or ask_unavailable_reason(entry.cls)) if check else None
        listing.append({"name": name, "description": entry.cls.description, "plugin": entry.plugin.name,
                        "devices": list(backend_devices(entry.cls)),
                        "dtypes": [dtype_name(d) for d in getattr(entry.cls, "dtypes", ())],
                        "distribution": entry.plugin.dist, "version": entry.plugin.version,
                        "params": [{"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help,
                                    "summary": p.describe()} for p in entry.cls.params],
                        "available": (reason is None) if check else None, "reason": reason})
    failures = [{"plugin": f.plugin, "distribution": f.dist, "error": f.error} for f in registry.failures]
    if args.json:
        return json.dumps({"backends": listing, "failed_plugins": failures, "device": placement.device,
                           "dtype": placement.dtype}, indent=2, default=str) + "\n", not failures
    lines = [f"availability on {placement.device}, {placement.dtype} (--device/--dtype to ask about another)"
             if check else "availability not checked (--check; --device/--dtype check on that device and dtype)"]
    for item in listing:
        status = ("availability not checked" if item["available"] is None
                  else "available" if item["available"] else f"UNAVAILABLE: {item['reason']}")
        lines.append(f"{item['name']}  —  {item['description']}")
        lines.append(f"    plugin {item['plugin']} ({item['distribution']} {item['version']}); {status}")
        lines.append(f"    devices {', '.join(item['devices'])}; dtypes {', '.join(item['dtypes'])}")
        for param in item["params"]:
            lines.append(f"    {param['summary']}" + (f"  — {param['help']}" if param["help"] else ""))
    for failure in failures:
        lines.append(f"failed plugin {failure['plugin']} ({failure['distribution']}): {failure['error']}")
    return "\n".join(lines) + "\n", not failures


def cmd_tasks(args: argparse.Namespace) -> int:
    from .listing_cache import cached_listing

    print(cached_listing("tasks", _tasks_text, refresh=args.refresh), end="")
    return 0


def _tasks_text() -> tuple[str, bool]:
    registry = _registry()
    lines = []
    for name, entry in registry.tasks.items():
        task = entry.task
        kind = "regression" if task.is_regression else f"{task.num_labels} classes"
        metrics = ", ".join(m.name for m in task.metrics)
        lines.append(f"{name:8s} {task.dataset}/{task.config} [{task.split}]  {kind}; metrics: {metrics}"
                     f"  ({task.description}; plugin {entry.plugin.name})")
    return "\n".join(lines) + "\n", not registry.failures


def cmd_run(args: argparse.Namespace) -> int:
    from .execution.runner import RunSpec, run
    from .execution.summary import run_summary

    if args.instructions_only:
        return _run_instructions(args, run_id=None)

    tasks = _split(args.tasks)
    if tasks == []:
        raise UserError(f"--tasks {args.tasks!r} names no task; give task names such as mrpc,rte (see attnbench tasks)")
    shapes = list(dict.fromkeys(args.shape or []))  # --shape: the first is the main latency shape
    if shapes:
        args.batch_size, args.seq_len = shapes[0]
    spec = RunSpec(backends=args.backend or ["dense"], tasks=tasks, extra_shapes=shapes[1:] if shapes else None,
                   model=args.model, data=args.data,
                   limit=args.limit, max_tokens=args.max_tokens or None, eval_batch_size=args.eval_batch_size,
                   batch_size=args.batch_size, seq_len=args.seq_len, threads=args.threads, repeats=args.repeats,
                   warmup=args.warmup, fidelity_examples=args.fidelity_examples, speed=not args.no_speed,
                   executor=args.executor, resume=args.resume, store=None if args.no_store else args.store,
                   progress=not args.no_progress, device=args.device, dtype=args.dtype,
                   l2_flush=not args.no_l2_flush, throughput_batch=args.throughput_batch, margin=args.margin)
    result = run(spec)
    print(run_summary(result.rows))
    if spec.store is not None:
        print(f"\nrun {result.run_id}: {len(result.rows)} rows from {result.cells - result.cells_done_before} "
              f"cell(s) written to {spec.store}"
              + (f" ({result.cells_done_before} cell(s) were already there)" if result.cells_done_before else "")
              + f"; read them with harness.read_results({str(spec.store)!r})")
    if result.failures:
        print(f"{len(result.failures)} cell(s) failed: {', '.join(result.failures)}; rerun with --resume",
              file=sys.stderr)
        return 1
    if args.instructions:
        return _run_instructions(args, run_id=result.run_id)
    return 0


def _run_instructions(args: argparse.Namespace, run_id: str | None) -> int:
    """``run --instructions``: instruction counts under callgrind (harness.execution.instructions)."""
    from .execution.instructions import run_instructions
    from .history.store import parse_store

    store = None if args.no_store else parse_store(args.store)
    rows, skipped = run_instructions(args.backend or ["dense"], store=store, model=args.model,
                                     repeats=args.instruction_repeats, run_id=run_id,
                                     parts=tuple(_split(args.instruction_parts)))
    for r in rows:
        print(f"{r['backend']:28s} {r['metric']:28s} {r['value']:>16,.0f} instructions")
    if store is not None and rows:
        print(f"{len(rows)} instruction-count rows written to {store}")
    return 0


def cmd_import_asv(args: argparse.Namespace) -> int:
    from .history.asv_import import import_asv

    summary = import_asv(args.results, args.store)
    print(f"{summary.files} asv result file(s): {summary.imported} imported ({summary.rows} rows), "
          f"{summary.skipped_existing} already in {args.store}")
    if summary.skipped_version or summary.skipped_unknown:
        print(f"skipped {summary.skipped_version} benchmark result(s) recorded with another version of the "
              f"benchmark than {args.results}/benchmarks.json (their parameters may be named or ordered "
              f"differently now) and {summary.skipped_unknown} of benchmark(s) no longer in it")
    return 0


def _check_thresholds(args: argparse.Namespace, *names: str) -> None:
    """Thresholds are sizes (``>= 0``) and ``--alpha`` a probability in (0, 1)."""
    for name in names:
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(args, name)}")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, not {args.alpha}")


def cmd_compare(args: argparse.Namespace) -> int:
    from .history.compare import compare, to_markdown
    from .history.store import read_results

    from .history.within import compare_within_run, pair_across_runs

    _check_thresholds(args, "threshold", "abs_threshold")
    rows = read_results(args.store)
    if args.baseline:
        if args.b is not None:  # two runs: their verdicts; exit 1 when "not worse" became "worse"
            from .history.within import compare_verdicts

            text, code = compare_verdicts(rows, args.a, args.b, args.baseline)
            print(text)
            return code
        text, _ = compare_within_run(rows, args.store, args.a, args.baseline, args.candidate, alpha=args.alpha)
        print(text)
        return 0
    if args.a is None or args.b is None:
        raise UserError("give two commits or runs A and B, or --baseline BACKEND [RUN] to compare backends "
                        "within a run")
    paired = _compare_paired(rows, args)
    if paired is not None:
        return paired
    stored = rows  # the verdict gate reads every category
    if args.category:
        rows = rows[rows["category"].isin(args.category)]
    comparison = compare(rows, args.a, args.b, threshold=args.threshold, alpha=args.alpha,
                         abs_threshold=args.abs_threshold)
    runs = set(rows["run_id"])
    comparison = type(comparison)(pair_across_runs(comparison.table, rows, args.store,
                                                   args.a if args.a in runs else None,
                                                   args.b if args.b in runs else None, alpha=args.alpha,
                                                   abs_threshold=args.abs_threshold),
                                  comparison.label_a, comparison.label_b)
    print(to_markdown(comparison, threshold=args.threshold, only_changes=args.only_changed,
                      abs_threshold=args.abs_threshold))
    from .history.within import verdict_gate

    gate, worsened = verdict_gate(stored, args.a, args.b)  # two runs with verdicts: "not worse" → "worse" fails
    if gate:
        print("\n" + gate)
    return 1 if len(comparison.regressions) or worsened else 0


def _compare_paired(rows: pd.DataFrame, args: argparse.Namespace) -> int | None:
    """A and B of one ``attnbench ab`` session: paired analysis (harness.history.ab); else ``None``."""
    from .history import ab

    session = ab.select_session(rows, args.a, args.b)
    if session is None:
        return None
    if args.category:
        session = session[session["category"].isin(args.category)]
    results = ab.analyse_session(session, threshold=args.threshold, alpha=args.alpha)
    print(ab.to_markdown(results, a=args.a, b=args.b, threshold=args.threshold, alpha=args.alpha))
    return 1 if any(r.verdict == "regression" for r in results) else 0


def cmd_ab(args: argparse.Namespace) -> int:
    import pandas as pd

    from .execution.ab_runner import run_ab
    from .history import ab
    from .history.store import parse_store

    store = None if args.no_store else parse_store(args.store)
    backends = args.backend or ["dense"]
    if "dense" not in backends:
        backends = ["dense", *backends]  # the reference of the ÷ dense series, timed in the same processes
    session, rows = run_ab(args.a, args.b, backends=backends, parts=tuple(_split(args.parts)), pairs=args.pairs,
                           repeats=args.repeats, threads=args.threads, batch_size=args.batch_size,
                           seq_len=args.seq_len, store=store)
    frame = ab.ab_rows(pd.DataFrame(rows))
    results = ab.analyse_session(frame, threshold=args.threshold, alpha=args.alpha)
    print(ab.to_markdown(results, a=args.a, b=args.b, threshold=args.threshold, alpha=args.alpha))
    if store is not None:
        print(f"\nsession {session}: {len(rows)} paired rows written to {store}; analyse again with "
              f"`attnbench compare {session}-A {session}-B`")
    return 1 if any(r.verdict == "regression" for r in results) else 0


def cmd_regressions(args: argparse.Namespace) -> int:
    from .history.compare import format_param
    from .history.regressions import compare_hint, find_regressions, to_frame
    from .history.scales import format_change
    from .history.store import read_results
    import pandas as pd

    _check_thresholds(args, "min_effect", "min_abs_effect")
    rows = read_results(args.store)
    if args.category:
        rows = rows[rows["category"].isin(args.category)]
    points = to_frame(find_regressions(rows, alpha=args.alpha, min_effect=args.min_effect,
                                       min_abs_effect=args.min_abs_effect,
                                       categories=tuple(args.category) if args.category else None,
                                       relative_to=None if args.absolute_only else args.reference))
    hint = compare_hint(rows)
    if points.empty:
        print("no significant change points")
        if hint:
            print(hint)
        return 0
    if not args.all:
        points = points[points["kind"] == "regression"]
    print("| kind | suspected commit | previous | series | before | after | step | p (permutation) |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    points["series_kind"] = points["relative_to"].map(lambda r: f" (÷ {r} of the same run)" if r else "")
    for r in points.itertuples():
        series = ", ".join(f"{k}={format_param(getattr(r, k))}" for k in ("metric", "backend", "task", "threads", "seq_len",
                                                            "machine") if pd.notna(getattr(r, k)))
        print(f"| {r.kind} | {r.commit[:10]} | {r.previous[:10]} | {series}{r.series_kind} | {r.before:.4g} | {r.after:.4g} | "
              f"{format_change(r.change, r.scale)} | {r.p_value:.3g} |")
    if hint:
        print(hint)
    return 1 if (points["kind"] == "regression").any() else 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .history.report import write_report
    from .history.slides import choose_run, write_figures
    from .history.store import read_results

    rows = read_results(args.store)
    run_id, notes = choose_run(rows, args.run, args.plan) if (rows["source"] == "harness").any() else (None, [])
    for note in notes:
        print(note)
    path = write_report(rows, args.output, run_id=run_id)
    print(f"wrote {path}")
    formats = tuple(f.strip() for f in (args.format or "").split(",") if f.strip())
    if (formats or args.figures) and run_id is not None:
        directory = Path(args.figures) if args.figures else Path(args.output).parent / "figures"
        for written in write_figures(rows, directory, run_id, formats or ("png", "svg")):
            print(f"wrote {written}")
    return 0


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a shape BATCHxTOKENS such as 1x128, got {text!r}")
    return int(parts[0]), int(parts[1])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description=__doc__.splitlines()[0].rstrip("."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backends", help="list backends with plugin, version and parameters (availability with --check)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true",
                   help="also check whether each backend can run here (builds kernels, may take seconds)")
    p.add_argument("--refresh", action="store_true", help="rebuild the listing cached for this environment")
    p.add_argument("--device", metavar="cpu|cuda[:N]", help="availability on this device (default cpu; implies --check)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="availability in this dtype "
                   "(default float32; implies --check)")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("tasks", help="list tasks with data source and metrics")
    p.add_argument("--refresh", action="store_true", help="rebuild the listing cached for this environment")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("run", help="measure backends on tasks and store the results")
    p.add_argument("-b", "--backend", action="append", metavar="SPEC",
                   help="backend spec, repeatable: -b dense -b topk:k=8,bits=4 (default: dense)")
    p.add_argument("--tasks", metavar="A,B,...", help="comma-separated task names (default: all)")
    p.add_argument("--model", action="append", metavar="ID|DIR|TASK=ID|DIR",
                   help="'embedded' (default), a fine-tuned checkpoint for all tasks, or one per task as TASK=PATH")
    p.add_argument("--data", default="sample", metavar="sample|hub|DIR",
                   help="bundled sample (default, offline), the Hugging Face hub, or a <task>/<split>.parquet directory")
    p.add_argument("--limit", type=_positive, metavar="N", help="evaluate at most N examples per task")
    p.add_argument("--margin", type=float, metavar="M", help="non-inferiority margin of the verdicts, in units "
                   "of each task's primary metric (default 0.01: one point of accuracy)")
    p.add_argument("--max-tokens", type=int, default=4096, metavar="N",
                   help="padded tokens per evaluation batch (length-sorted batches; default 4096; 0: no limit)")
    p.add_argument("--eval-batch-size", type=_positive, metavar="N", help="at most N examples per evaluation batch")
    p.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="latency shape: batch (default 8)")
    p.add_argument("--seq-len", type=_positive, default=128, metavar="N", help="latency shape: tokens (default 128)")
    p.add_argument("--shape", action="append", type=_shape, metavar="BxT",
                   help="latency shape batch x tokens, repeatable: --shape 1x128 --shape 8x512 "
                        "(default: --batch-size x --seq-len, 8x128)")
    p.add_argument("--threads", type=_positive, metavar="N", help="torch threads (default: all available cores)")
    p.add_argument("--repeats", type=_positive, default=10, metavar="N", help="timed repetitions (default 10)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed warm-up rounds (default 2)")
    p.add_argument("--fidelity-examples", type=int, default=64, metavar="N",
                   help="examples per task for the attention-fidelity pass; 0 skips it (default 64)")
    p.add_argument("--no-speed", action="store_true", help="skip the latency and memory cells")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda[:N]",
                   help="where model and inputs live (default cpu); CUDA timings use CUDA events")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="model and inputs cast to this dtype (default float32); below float32 the dense "
                        "reference is also compared with dense float32")
    p.add_argument("--no-l2-flush", action="store_true",
                   help="CUDA timing: do not flush the L2 cache before every timed call (recorded as the clock)")
    p.add_argument("--throughput-batch", type=_positive, default=128, metavar="N",
                   help="CUDA: the large-batch throughput shape N × --seq-len, besides batch 1 (default 128)")
    p.add_argument("--executor", default="local", metavar="local|processes:N|dask://HOST:PORT",
                   help="where eval cells run (default: this process); timing always stays here")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest run of the same plan: skip the cells already in the store")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="DIR|URL",
                   help=f"results store, a directory or an fsspec URL (default {DEFAULT_STORE})")
    p.add_argument("--no-store", action="store_true", help="do not write results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--instructions", action="store_true",
                   help="also count instructions of each backend under valgrind's callgrind (batch 1 x 128, one thread)")
    p.add_argument("--instructions-only", action="store_true",
                   help="only the instruction counts (no eval or wall-time cells)")
    p.add_argument("--instruction-repeats", type=_positive, default=1, metavar="N",
                   help="callgrind samples per backend and part (default 1; counts repeat exactly)")
    p.add_argument("--instruction-parts", default="attention_core,forward", metavar="PARTS",
                   help="what to count: attention_core,forward (default both; a forward costs minutes under callgrind)")
    p.set_defaults(func=cmd_run)

    store_help = f"results store, a directory or an fsspec URL such as s3://bucket/results (default {DEFAULT_STORE})"
    p = sub.add_parser("import-asv", help="import asv's results JSON into the Parquet store (idempotent)")
    p.add_argument("results", nargs="?", default="results/asv", help="asv results directory (default results/asv)")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="DIR|URL", help=store_help)
    p.set_defaults(func=cmd_import_asv)

    p = sub.add_parser("compare", help="B/A (times, sizes, rates) or B - A (scores) per benchmark with "
                       "confidence intervals; exit 1 on a regression")
    p.add_argument("a", metavar="A", nargs="?",
                   help="baseline: commit (prefix) or run id; with --baseline: the run (default: the latest)")
    p.add_argument("b", metavar="B", nargs="?", help="candidate: commit (prefix) or run id")
    p.add_argument("--baseline", metavar="BACKEND",
                   help="compare backends within one run against this one (e.g. dense): the verdicts, paired "
                        "tests on the same examples (Holm-adjusted) and speed-ups from the interleaved timings; "
                        "with two runs A B: their verdicts, exit 1 when a backend not worse in A is worse in B")
    p.add_argument("--candidate", action="append", metavar="BACKEND",
                   help="with --baseline: only these backends (repeatable; default: every other backend of the run)")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="relative change B/A that counts, for times, sizes and rates (default 0.05)")
    p.add_argument("--abs-threshold", type=float, default=0.01,
                   help="absolute change B - A that counts, for scores and other metrics (default 0.01)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--category", action="append", metavar="C",
                   help="only these categories (quality, agreement, fidelity, speed, memory); repeatable")
    p.add_argument("--only-changed", action="store_true", help="list only regressions, improvements and rows whose settings differ")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="DIR|URL", help=store_help)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ab", help="wall time of two git revisions measured alternately; paired rows; exit 1 "
                                  "on a significant regression")
    p.add_argument("a", metavar="REV_A", help="baseline revision (e.g. main)")
    p.add_argument("b", metavar="REV_B", help="candidate revision (e.g. HEAD)")
    p.add_argument("-b", "--backend", action="append", metavar="SPEC", help="backend spec, repeatable (dense is "
                   "always measured as the reference)")
    p.add_argument("--parts", default="attention_core,forward", help="attention_core,forward (default both)")
    p.add_argument("--pairs", type=_positive, default=20, help="A/B process pairs (default 20)")
    p.add_argument("--repeats", type=_positive, default=15, help="timed rounds per process (default 15)")
    p.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    p.add_argument("--batch-size", type=_positive, default=8, help="default 8")
    p.add_argument("--seq-len", type=_positive, default=128, help="default 128")
    p.add_argument("--threshold", type=float, default=0.03, help="relative change that counts (default 0.03)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="DIR|URL", help=store_help)
    p.add_argument("--no-store", action="store_true", help="do not write the rows")
    p.set_defaults(func=cmd_ab)

    p = sub.add_parser("regressions", help="change points over the commit history of every series")
    p.add_argument("--alpha", type=float, default=0.01, help="significance of the permutation test (default 0.01)")
    p.add_argument("--min-effect", type=float, default=0.02,
                   help="smallest relative step reported, for times, sizes and rates (default 0.02)")
    p.add_argument("--min-abs-effect", type=float, default=0.01,
                   help="smallest absolute step reported, for scores and other metrics (default 0.01)")
    p.add_argument("--category", action="append", metavar="C", help="only these categories; repeatable")
    p.add_argument("--all", action="store_true", help="list improvements too")
    p.add_argument("--reference", default="dense",
                   help="also search speed series divided by this backend's value in the same run (default dense)")
    p.add_argument("--absolute-only", action="store_true", help="do not search the relative series")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="DIR|URL", help=store_help)
    p.set_defaults(func=cmd_regressions)

    p = sub.add_parser("report", help="write a self-contained HTML report with plots, and figures as PNG/SVG")
    p.add_argument("--output", default="results/html/report.html", help="default results/html/report.html")
    p.add_argument("--run", metavar="RUN_ID", help="run for the per-run figures (default: the latest harness run; "
                   "a warning names a run of the same tasks with more examples)")
    p.add_argument("--plan", metavar="PLAN_ID", help="the latest run of this plan instead")
    p.add_argument("--format", metavar="png,svg", help="also write each per-task figure in these formats")
    p.add_argument("--figures", metavar="DIR",
                   help="directory for the figure files (default: figures/ beside --output; implies png,svg)")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="DIR|URL", help=store_help)
    p.set_defaults(func=cmd_report)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for attnbench's own progress: silence transformers' and datasets' bars and notices."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        _quiet_libraries()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("attnbench: interrupted; finished cells are in the store: rerun the same command with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
