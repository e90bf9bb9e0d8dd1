"""Tasks layer: the task contract, metrics, data sources, encoding, and the bundled GLUE sample.

* :mod:`.contract` — :class:`Task` and :class:`Metric` (what a task plugin registers);
* :mod:`.metrics` — metric functions (scikit-learn / SciPy) a task plugin can reuse;
* :mod:`.data` — where rows come from (``sample``, ``hub``, a directory of Parquet files);
* :mod:`.encoding` — tokenization, length-sorted batches, fixed-shape inputs;
* ``glue_sample/`` — the bundled sample of GLUE (package data).
"""
