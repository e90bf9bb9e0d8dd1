"""Models layer: which dense model evaluates which task.

* :mod:`.loading` — ``--model`` values, :class:`~.loading.TaskModels`, Hugging Face checkpoints;
* :mod:`.embedded` — the embedded default (the packaged MiniLM and its per-task heads).
"""
