"""``attnbench run``: measure backends on tasks and store the rows."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .instructions import count_instructions
from .options import add_store, quiet_libraries
from .options import positive as _positive
from .options import shape as _shape
from .options import split as _split


def run(args: argparse.Namespace) -> int:
    if args.instructions_only:
        return count_instructions(args, run_id=None)

    if args.margin is not None:  # before anything is created or measured
        from ..noninferiority import check_margin

        check_margin(args.margin)
    tasks = _split(args.tasks)
    if tasks == []:
        raise UserError(f"--tasks {args.tasks!r} names no task; give task names such as mrpc,rte (see attnbench tasks)")
    shapes = list(dict.fromkeys(args.shape or []))  # --shape: the first is the main latency shape
    if shapes:
        args.batch_size, args.seq_len = shapes[0]
    from ..execution.precheck import precheck_run

    precheck_run(args.backend or ["dense"], tasks, n_shapes=max(1, len(shapes)), speed=not args.no_speed,
                 max_cells=args.max_cells, confirmed=args.yes)  # before torch is imported
    quiet_libraries()
    from ..analysis.summary import run_summary
    from ..execution.runner import RunSpec
    from ..execution.runner import run as run_plan

    spec = RunSpec(backends=args.backend or ["dense"], tasks=tasks, extra_shapes=shapes[1:] if shapes else None,
                   model=args.model, data=args.data,
                   limit=args.limit, max_tokens=args.max_tokens or None, eval_batch_size=args.eval_batch_size,
                   batch_size=args.batch_size, seq_len=args.seq_len, threads=args.threads, repeats=args.repeats,
                   warmup=args.warmup, fidelity_examples=args.fidelity_examples, speed=not args.no_speed,
                   executor=args.executor, resume=args.resume, store=None if args.no_store else args.store,
                   progress=not args.no_progress, device=args.device, dtype=args.dtype,
                   l2_flush=not args.no_l2_flush, throughput_batch=args.throughput_batch,
                   max_cells=args.max_cells, confirmed=args.yes, margin=args.margin)
    result = run_plan(spec)
    print(run_summary(result.rows))
    from ..execution.outcome import closing_lines

    out, err = closing_lines(result, spec.store, traceback=args.traceback)
    if out:
        print(out)
    if err:
        print(err, file=sys.stderr)
    if result.failures:
        return 1
    if args.instructions:
        return count_instructions(args, run_id=result.run_id)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``run`` command's options."""
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
    add_store(p)
    p.add_argument("--no-store", action="store_true", help="do not write results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--traceback", action="store_true",
                   help="print the full traceback of every failed cell (a failure is otherwise one line)")
    p.add_argument("--yes", action="store_true", help="run even when the run has more than --max-cells cells")
    p.add_argument("--max-cells", type=_positive, default=500, metavar="N",
                   help="refuse a run of more than N cells unless --yes (default 500)")
    p.add_argument("--instructions", action="store_true",
                   help="also count instructions of each backend under valgrind's callgrind (batch 1 x 128, one thread)")
    p.add_argument("--instructions-only", action="store_true",
                   help="only the instruction counts (no eval or wall-time cells): `attnbench instructions`")
    p.add_argument("--instruction-repeats", type=_positive, default=1, metavar="N",
                   help="callgrind samples per backend and part (default 1; counts repeat exactly)")
    p.add_argument("--instruction-parts", default="attention_core,forward", metavar="PARTS",
                   help="what to count: attention_core,forward (default both; a forward costs minutes under callgrind)")
    p.set_defaults(func=run)
