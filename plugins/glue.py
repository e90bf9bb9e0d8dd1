"""The nine GLUE tasks, registered through ``register_tasks`` like any plugin's tasks."""

from __future__ import annotations

from typing import Callable

from harness import Metric, Task, hookimpl
from harness.tasks import metrics

GLUE = "nyu-mll/glue"
_ACC = Metric("accuracy", metrics.accuracy)
_F1 = Metric("f1", metrics.f1)

GLUE_TASKS: tuple[Task, ...] = (
    Task("cola", GLUE, "cola", "validation", ("sentence",), 2, (Metric("matthews", metrics.matthews),),
         label_names=("unacceptable", "acceptable"), description="grammatical acceptability"),
    Task("sst2", GLUE, "sst2", "validation", ("sentence",), 2, (_ACC,),
         label_names=("negative", "positive"), description="sentiment"),
    Task("mrpc", GLUE, "mrpc", "validation", ("sentence1", "sentence2"), 2, (_ACC, _F1),
         label_names=("not_equivalent", "equivalent"), description="paraphrase"),
    Task("stsb", GLUE, "stsb", "validation", ("sentence1", "sentence2"), 1,
         (Metric("pearson", metrics.pearson), Metric("spearman", metrics.spearman)),
         description="semantic similarity (regression, 0-5)", label_range=(0.0, 5.0)),
    Task("qqp", GLUE, "qqp", "validation", ("question1", "question2"), 2, (_ACC, _F1),
         label_names=("not_duplicate", "duplicate"), description="question paraphrase"),
    Task("mnli-m", GLUE, "mnli", "validation_matched", ("premise", "hypothesis"), 3, (_ACC,),
         label_names=("entailment", "neutral", "contradiction"),
         description="inference, matched genres"),
    Task("mnli-mm", GLUE, "mnli", "validation_mismatched", ("premise", "hypothesis"), 3, (_ACC,),
         label_names=("entailment", "neutral", "contradiction"),
         description="inference, mismatched genres"),
    Task("qnli", GLUE, "qnli", "validation", ("question", "sentence"), 2, (_ACC,),
         label_names=("entailment", "not_entailment"), description="question answering NLI"),
    Task("rte", GLUE, "rte", "validation", ("sentence1", "sentence2"), 2, (_ACC,),
         label_names=("entailment", "not_entailment"), description="textual entailment"),
    Task("wnli", GLUE, "wnli", "validation", ("sentence1", "sentence2"), 2, (_ACC,),
         label_names=("not_entailment", "entailment"), description="Winograd NLI"),
)


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    for task in GLUE_TASKS:
        register(task)
