"""The store layer: every measured row, written once and read back as a tidy table.

* :mod:`.schema` — the row schema: columns, types, roles (identity, setting, descriptive, value), the pairing
  key and the vocabulary of categories, directions and metric prefixes;
* :mod:`.parquet` — the Parquet store: :func:`~harness.write_rows`, :func:`~harness.read_results`, ``parse_store``;
* :mod:`.predictions` — per-example predictions beside the rows;
* :mod:`.asv_import` — asv results JSON → store rows, each measurement once.

Depends on nothing above it: no analysis, no execution, no plugin registry.
"""
