"""History layer: the results store and what is computed from it.

* :mod:`.schema` — the row schema: columns, types, roles (identity, setting, descriptive, value) and the pairing key;
* :mod:`.store` — the Parquet store: :func:`~harness.write_rows`, :func:`~harness.read_results`, ``parse_store``;
* :mod:`.asv_import` — asv results JSON → store rows;
* :mod:`.compare` — two runs or commits side by side, with significance tests;
* :mod:`.verdicts` — one verdict per backend and task: non-inferiority of accuracy, speed per shape, crossover;
* :mod:`.changepoints` — E-divisive change-point detection;
* :mod:`.regressions` — change points in per-commit series;
* :mod:`.report` — the self-contained HTML report.
"""
