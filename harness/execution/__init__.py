"""Execution layer: one run, from a :class:`~harness.RunSpec` to stored rows.

* :mod:`.runner` — :func:`~harness.run`: plan cells, execute them, collect rows;
* :mod:`.cells` — the plan's units (an eval cell per backend × task, a speed cell per shape) and resume;
* :mod:`.eval_cells` — the session that evaluates eval cells (reference, backend, agreement, fidelity);
* :mod:`.forward` — one forward pass over an encoded split: predictions, logits, agreement;
* :mod:`.fidelity` — attention fidelity against the dense reference, per layer;
* :mod:`.sampling` — the one sampling API (warm-up, interleaving, raw samples) with pluggable clocks;
* :mod:`.executors` — local, process-pool and Dask execution of cells;
* :mod:`.rows` — building result rows with provenance;
* :mod:`.summary` — the terminal summary of a run.
"""
