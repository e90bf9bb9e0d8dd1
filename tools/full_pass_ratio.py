"""The full-validation harness run against the plain script, side by side in one sitting.

Runs ``tools/plain_glue_pass.py`` and ``attnbench run -b dense --data DIR`` (no speed cells, no fidelity
pass, the same threads and token budget) one after the other, ``--rounds`` times alternating, each in a
fresh process, and prints tokens/s of both and their ratio, with the harness's padding waste and share of
time outside the model from its stored throughput rows.

    python tools/full_pass_ratio.py GLUE_DIR --threads 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import read_results

ROOT = Path(__file__).resolve().parent.parent


def plain(data: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "plain_glue_pass.py"), str(data), "--threads",
                          str(threads)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def harness(data: Path, threads: int, store: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "run", "-b", "dense", "--data", str(data), "--threads",
                    str(threads), "--no-speed", "--fidelity-examples", "0", "--store", str(store), "--no-progress"],
                   capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    rows = read_results(store)
    run = rows[rows["run_id"] == rows.sort_values("timestamp")["run_id"].iloc[-1]]
    wall = run[run["metric"] == "eval_wall_time"]["value"]
    tokens_per_s = run[run["metric"] == "eval_tokens_per_s"]["value"]
    tokens = float((tokens_per_s.to_numpy() * wall.to_numpy()).sum())
    outside = run[run["metric"] == "time_outside_model"]["value"].to_numpy()
    padding = run[run["metric"] == "padding_waste"]["value"].to_numpy()
    weights = wall.to_numpy() / wall.sum()
    return {"tool": "harness", "tokens": round(tokens), "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "eval_seconds": round(float(wall.sum()), 2),
            "padding_waste": round(float((padding * weights).sum()), 4),
            "outside_model_in_passes": round(float((outside * weights).sum()), 4),
            "outside_passes": round(1 - float(wall.sum()) / seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            results.append(plain(args.data, args.threads))
            print(json.dumps(results[-1]), flush=True)
            results.append(harness(args.data.resolve(), args.threads, Path(tmp) / "store"))
            print(json.dumps(results[-1]), flush=True)
    for tool in ("plain", "harness"):
        rates = [r["tokens_per_s"] for r in results if r["tool"] == tool]
        print(f"{tool}: median {sorted(rates)[len(rates) // 2]:.0f} tokens/s over {len(rates)} pass(es)")
    plain_rate = sorted(r["tokens_per_s"] for r in results if r["tool"] == "plain")
    harness_rate = sorted(r["tokens_per_s"] for r in results if r["tool"] == "harness")
    print(f"harness / plain throughput: {harness_rate[len(harness_rate) // 2] / plain_rate[len(plain_rate) // 2]:.3f}")


if __name__ == "__main__":
    main()
