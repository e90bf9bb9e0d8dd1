"""Top-k selection on long sequences: recall of the exact top-k, softmax mass and attention cosine against
dense, on real tokens packed into ``batch × seq_len`` inputs. Prints a markdown table.

GLUE rows are short (mean length: CoLA 12 tokens, SST-2 25, MNLI 39, RTE 65), so on the GLUE sample k = 16
is exact attention for many rows; this measures the selection where every row is longer than k. Each
input row concatenates a task's encoded examples (``harness.tasks.encoding.fixed_shape_inputs``: real
token statistics, several [CLS] … [SEP] segments per row, no padding); the model is that task's model
(the embedded default: MiniLM with the task's adapter); the figures are those of the harness's fidelity
pass (``harness.execution.fidelity.attention_fidelity``: every layer, the backend's model run end to end
against dense's).

    python tools/topk_fidelity_long.py                                    # seq 512, batch 4, every task
    python tools/topk_fidelity_long.py --seq-len 512 --tasks sst2,mnli-m -b topk:k=16,scorer=fbgemm -b topk:k=32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import load_registry  # noqa: E402
from harness.execution.eval_cells import prepare_model  # noqa: E402
from harness.execution.fidelity import attention_fidelity, reference_outputs  # noqa: E402
from harness.models.loading import load_task_models  # noqa: E402
from harness.tasks.data import DataSource  # noqa: E402
from harness.tasks.encoding import encode, fixed_shape_inputs  # noqa: E402

BACKENDS = ["topk:k=16,scorer=fbgemm", "topk:k=16"]
COLUMNS = ("topk_recall", "topk_mass", "topk_rows_longer", "attn_cosine_mean", "attn_cosine_worst")


def measure(specs: list[str], task_names: list[str] | None, *, seq_len: int, batch_size: int,
            data: str = "sample") -> list[dict]:
    """One dict per (task, backend): the fidelity figures of ``COLUMNS`` on one ``batch_size × seq_len`` batch."""
    registry = load_registry()
    tasks = [registry.task(name) for name in (task_names or list(registry.tasks))]
    source = DataSource.parse(data)
    models = load_task_models(None, tasks, source)
    dense = registry.resolve("dense")
    results = []
    for task in tasks:
        encoded = encode(task, source.load(task), models.tokenizer(task), models.max_length(task))
        batches = [fixed_shape_inputs(encoded, batch_size, seq_len)]
        kwargs = models.forward_kwargs(task)
        reference = reference_outputs(prepare_model(models.model(task), dense), batches, kwargs)
        for spec in specs:
            backend = registry.resolve(spec)
            figures = attention_fidelity(prepare_model(models.model(task), backend), backend, batches, reference,
                                         kwargs)
            results.append({"task": task.name, "backend": spec, **figures})
    return results


def table(results: list[dict]) -> str:
    lines = ["| task | backend | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for r in results:
        lines.append(f"| {r['task']} | `{r['backend']}` | "
                     + " | ".join(f"{r[c]:.4f}" if c in r else "-" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--backend", action="append", help=f"backend specs (default: {', '.join(BACKENDS)})")
    parser.add_argument("--tasks", help="comma-separated task names (default: every task)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default="sample", help="data source, as attnbench run --data (default: sample)")
    args = parser.parse_args(argv)
    if args.seq_len < 2 or args.batch_size < 1:
        parser.error("--seq-len must be at least 2 and --batch-size at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = measure(args.backend or BACKENDS, args.tasks.split(",") if args.tasks else None,
                      seq_len=args.seq_len, batch_size=args.batch_size, data=args.data)
    print(f"batch {args.batch_size} × seq {args.seq_len}, real tokens packed per task; "
          f"{time.perf_counter() - start:.0f} s\n")
    print(table(results))
    low = min(r["topk_recall"] for r in results if "topk_recall" in r)
    print(f"\nlowest top-k recall: {low:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
