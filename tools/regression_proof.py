"""Proof on real commits: a throwaway git history of this project with one ~5 % slower attention core.

``python tools/regression_proof.py history DIR`` copies the current tree (tracked and untracked-not-ignored
files, plus the built kernels) into ``DIR``, makes ``--commits`` commits (each appends a line to
``PROOF_HISTORY.txt``) and, at a position drawn at random among those the change-point test can see (at
least three commits on each side), one commit that also makes ``dense:impl=eager``'s attention core do about
5 % more real work: it computes attention a second time for the first query row (of 128) and discards
the result (more instructions and more time, not a sleep; ``--extra-rows N``: N rows of every 128). ``measure`` runs the per-commit instruction
counts (``attnbench instructions --instruction-parts attention_core``, one valgrind process per
commit) over every commit into a store; ``check`` runs ``attnbench regressions`` on that store and checks that it names the slowed commit and
backend and no other commit; ``all`` does the three. ``synthetic`` draws 20-commit histories from the
per-commit noise of the measured instruction series (and a clean 5 % step) and counts hits and false flags.

Example (docs/lab/2026-11-30-regression-proof.md)::

    python tools/regression_proof.py all /tmp/proof --commits 20 --seed 1
    python tools/regression_proof.py synthetic --store /tmp/proof/store --trials 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOWED_BACKEND = "dense:impl=eager"
BACKENDS = ["dense", "dense:impl=eager"]
SLOW_FILE = Path("plugins/dense.py")
_ANCHOR = ("        return self._forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,"
           " **kwargs)\n")
_SLOW = '''        fn = self._forward
        out = fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if self.values["impl"] == "eager":  # regression_proof: ~5 % more real work in the attention core
            rows = max(1, query.shape[-2] * EXTRA_ROWS // 128)
            mask = attention_mask
            if mask is not None and mask.dim() >= 2 and mask.shape[-2] > 1:
                mask = mask[..., :rows, :]
            fn(module, query[..., :rows, :], key, value, mask, scaling=scaling, dropout=dropout, **kwargs)
        return out
'''
MIN_SIDE = 3


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "proof", "GIT_AUTHOR_EMAIL": "proof@example.invalid",
           "GIT_COMMITTER_NAME": "proof", "GIT_COMMITTER_EMAIL": "proof@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def tree_files(source: Path = ROOT) -> list[str]:
    """Tracked and untracked-but-not-ignored files of ``source`` (what a commit of the current tree holds)."""
    listed = _git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return [f for f in listed if f and (source / f).is_file()]


def slow_down(tree: Path, extra_rows: int = 1) -> None:
    """Patch ``tree`` so that dense eager attention does more work (raises if the anchor moved).

    ``extra_rows``: query rows per 128 (at least one) whose attention is computed a second time and discarded,
    in a second call of the same attention function. One row adds 4.2 % instructions at 1 × 128 (the
    per-commit instruction shape); the second call's fixed cost makes the wall-time step larger than the
    row share, so the A/B trials pick ``extra_rows`` for the wall time they need (docs/explanation/timing.md)."""
    if extra_rows < 1:
        raise ValueError("extra_rows must be >= 1")
    path = tree / SLOW_FILE
    text = path.read_text()
    if _ANCHOR not in text:
        raise RuntimeError(f"{SLOW_FILE}: the line the slowdown replaces is gone; update tools/regression_proof.py")
    path.write_text(text.replace(_ANCHOR, _SLOW.replace("EXTRA_ROWS", str(int(extra_rows))), 1))


def draw_position(commits: int, rng: random.Random) -> int:
    """Index of the first slowed commit, with at least ``MIN_SIDE`` commits on each side."""
    if commits < 2 * MIN_SIDE:
        raise ValueError(f"need at least {2 * MIN_SIDE} commits")
    return rng.randint(MIN_SIDE, commits - MIN_SIDE)


def build_history(dest: Path, *, commits: int = 20, seed: int = 0, position: int | None = None,
                  source: Path = ROOT, extra_rows: int = 1) -> dict:
    """Create the throwaway repository; returns ``{"shas": [...], "position": i, "slowed": sha}``."""
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    for name in tree_files(source):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    for so in (source / "cython_kernels").glob("*.so"):  # built kernels (ignored, never committed)
        shutil.copy2(so, dest / "cython_kernels" / so.name)
    position = draw_position(commits, random.Random(seed)) if position is None else position
    _git(dest, "init", "-q", "-b", "main")
    shas = []
    for i in range(commits):
        with open(dest / "PROOF_HISTORY.txt", "a") as f:
            f.write(f"commit {i}\n")
        message = f"proof commit {i}"
        if i == position:
            slow_down(dest, extra_rows)
            message += f": {SLOWED_BACKEND} attention core does ~5 % more work"
        _git(dest, "add", "-A")
        _git(dest, "commit", "-q", "-m", message)
        shas.append(_git(dest, "rev-parse", "HEAD").strip())
    info = {"shas": shas, "position": position, "slowed": shas[position], "backend": SLOWED_BACKEND,
            "extra_rows": extra_rows}
    (dest / ".git" / "proof.json").write_text(json.dumps(info))
    return info


def _env(repo: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


def measure(repo: Path, store: Path, *, backends: list[str] = BACKENDS, parts: str = "attention_core") -> list[float]:
    """Instruction counts of every commit of ``repo`` (oldest first); returns seconds per commit.

    ``parts``: the attention cores by default (about a minute of CPU per commit); ``attention_core,forward``
    adds the whole forwards (about 1.5 min of CPU per forward run under valgrind)."""
    info = json.loads((repo / ".git" / "proof.json").read_text())
    seconds = []
    for i, sha in enumerate(info["shas"]):
        _git(repo, "checkout", "-q", sha)
        start = time.perf_counter()
        command = [sys.executable, "-m", "harness", "instructions", "--instruction-parts", parts,
                   "--store", str(store)]
        for b in backends:
            command += ["-b", b]
        proc = subprocess.run(command, cwd=repo, env=_env(repo), capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if proc.returncode:
            raise RuntimeError(f"commit {i} ({sha[:10]}): {proc.stderr[-2000:]}")
        print(f"commit {i + 1}/{len(info['shas'])} {sha[:10]}: {seconds[-1]:.0f} s", file=sys.stderr, flush=True)
    _git(repo, "checkout", "-q", "main")
    return seconds


_ROW = re.compile(r"^\| (regression|improvement) \| (\w+) \| (\w+) \| (.*?) \|")


def parse_regressions(output: str) -> list[dict]:
    """The table rows of ``attnbench regressions`` output: kind, commit prefix, previous, series text."""
    found = []
    for line in output.splitlines():
        m = _ROW.match(line)
        if m:
            series = dict(part.split("=", 1) for part in m.group(4).split(" (")[0].split(", ") if "=" in part)
            found.append({"kind": m.group(1), "commit": m.group(2), "previous": m.group(3), "series": series,
                          "relative": " (÷ " in m.group(4)})
    return found


def check(repo: Path, store: Path) -> dict:
    """Run ``attnbench regressions`` on the store (in ``repo``, for its commit order) and judge it."""
    info = json.loads((repo / ".git" / "proof.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "harness", "regressions", "--category", "instructions",
                           "--store", str(store)], cwd=repo, env=_env(repo), capture_output=True, text=True)
    print(proc.stdout)
    return judge(parse_regressions(proc.stdout), info)


def judge(points: list[dict], info: dict) -> dict:
    slowed = info["slowed"]
    named = [p for p in points if p["kind"] == "regression" and slowed.startswith(p["commit"])
             and p["series"].get("backend") == info["backend"]]
    false = [p for p in points if not slowed.startswith(p["commit"]) or p["series"].get("backend") != info["backend"]]
    return {"found": bool(named), "false_flags": len(false), "position": info["position"],
            "ok": bool(named) and not false}


def synthetic(store: Path | None, *, trials: int = 20, commits: int = 20, step: float = 0.05, seed: int = 0,
              noise_sd: float | None = None) -> dict:
    """Histories drawn from the measured noise of the instruction series: per commit, the relative deviation
    of each unchanged commit's value from its series' median (the slowed series' segments are centred
    separately). A 5 % step at a random detectable position; counts hits at the right commit and false flags
    at the other commits."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from harness.analysis.regressions import detect_change_points
    from harness.store.parquet import read_results

    rng = np.random.default_rng(seed)
    rows = read_results(str(store)) if store is not None else None
    if noise_sd is not None:  # a given noise level instead of a store's: normal per-commit deviations
        rows = rows.iloc[:0] if rows is not None else None
    deviations = list(rng.normal(0, noise_sd, 10000)) if noise_sd is not None else []
    for _, series in ([] if rows is None else rows[rows["category"] == "instructions"].groupby(["backend", "metric"])):
        per_commit = series.groupby("commit")["value"].median().to_numpy()
        median = np.median(per_commit)
        dev = per_commit / median - 1
        deviations.extend(dev[np.abs(dev) < 0.01])  # the slowed series' other level is not noise
    deviations = np.asarray(deviations) if deviations else np.zeros(1)
    hits = false = 0
    for _ in range(trials):
        position = int(rng.integers(MIN_SIDE, commits - MIN_SIDE + 1))
        values = 1e9 * (1 + rng.choice(deviations, size=commits))
        values[position:] *= 1 + step
        found = detect_change_points(values)
        hits += any(index == position for index, *_ in found)
        false += sum(index != position for index, *_ in found)
    return {"trials": trials, "hits": hits, "false_flags": false, "other_commits": trials * (commits - 1),
            "noise_sd": float(np.std(deviations)), "noise_values": int(len(deviations))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["history", "measure", "check", "all", "synthetic"])
    parser.add_argument("dir", nargs="?", type=Path, help="the throwaway repository (history, measure, check, all)")
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--position", type=int, help="index of the slowed commit (default: random, seeded)")
    parser.add_argument("--store", type=Path, help="default DIR/../<name>-store")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--extra-rows", type=int, default=1,
                        help="history: query rows per 128 that the slowed core computes twice (default 1)")
    parser.add_argument("--noise-sd", type=float, help="synthetic: normal per-commit noise (relative) instead of --store's")
    args = parser.parse_args(argv)
    if args.action == "synthetic":
        if args.store is None and args.noise_sd is None:
            parser.error("synthetic needs --store or --noise-sd")
        print(json.dumps(synthetic(args.store, trials=args.trials, seed=args.seed, noise_sd=args.noise_sd)))
        return 0
    if args.dir is None:
        parser.error(f"{args.action} needs DIR")
    store = args.store or args.dir.with_name(args.dir.name + "-store")
    start = time.perf_counter()
    if args.action in ("history", "all"):
        if args.extra_rows < 1:
            parser.error("--extra-rows must be at least 1")
        info = build_history(args.dir, commits=args.commits, seed=args.seed, position=args.position,
                             extra_rows=args.extra_rows)
        print(f"history of {args.commits} commits in {args.dir}; slowed commit {info['position']} "
              f"({info['slowed'][:10]})", file=sys.stderr)
    if args.action in ("measure", "all"):
        seconds = measure(args.dir, store)
        print(f"measured {len(seconds)} commits: {sum(seconds):.0f} s, {sum(seconds) / len(seconds):.0f} s per "
              "commit", file=sys.stderr)
    if args.action in ("check", "all"):
        verdict = check(args.dir, store)
        verdict["seconds"] = round(time.perf_counter() - start)
        print(json.dumps(verdict))
        return 0 if verdict["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
