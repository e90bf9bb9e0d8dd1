"""A checkpoint that names its labels is scored in the task's label order, or refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_classifier
from harness import RunSpec, read_results, run
from harness.cli import main
from harness.errors import ModelError
from harness.models import loading
from harness.models.loading import HuggingFaceModels
from plugins.glue import GLUE_TASKS

MNLI = next(t for t in GLUE_TASKS if t.name == "mnli-m")
GLUE_ORDER = ["entailment", "neutral", "contradiction"]
PERMUTED = ["contradiction", "entailment", "neutral"]  # the order many MNLI checkpoints use


def save(path, tokenizer, names, rows=None):
    """The same tiny 3-label model (seed 0), its classifier rows reordered to ``rows``, labels named ``names``."""
    model = tiny_classifier(3)
    if rows is not None:
        with torch.no_grad():
            model.classifier.weight.copy_(model.classifier.weight[rows])
            model.classifier.bias.copy_(model.classifier.bias[rows])
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("labels")
    glue = save(root / "glue", tokenizer, GLUE_ORDER)
    # output j of the permuted checkpoint scores PERMUTED[j], i.e. GLUE output GLUE_ORDER.index(PERMUTED[j])
    permuted = save(root / "permuted", tokenizer, [n.upper() if i == 0 else n.title() for i, n in enumerate(PERMUTED)],
                    rows=[GLUE_ORDER.index(n) for n in PERMUTED])
    return glue, permuted


def test_permuted_labels_are_mapped_by_name(checkpoints, tokenizer):
    glue, permuted = checkpoints
    models = HuggingFaceModels({"*": str(permuted)}, [MNLI])
    order = models.label_order(MNLI)
    assert order.tolist() == [1, 2, 0]
    assert "CONTRADICTION" in models.model_facts(MNLI)["label_mapping"]
    reference = HuggingFaceModels({"*": str(glue)}, [MNLI])
    assert reference.label_order(MNLI) is None and reference.model_facts(MNLI) == {}
    batch = tokenizer(["a man sleeps", "the cat is on the mat", "it rains"], ["nobody sleeps", "a cat sits", "dry"],
                      padding=True, return_tensors="pt")
    with torch.inference_mode():
        mapped = models.model(MNLI)(**batch).logits.numpy()[:, order]
        expected = reference.model(MNLI)(**batch).logits.numpy()
    np.testing.assert_allclose(mapped, expected, atol=1e-6)


def test_a_run_scores_the_permuted_checkpoint_like_the_glue_ordered_one(checkpoints, tmp_path):
    glue, permuted = checkpoints

    def quality(model_dir, store):
        spec = RunSpec(backends=["dense", "dense:impl=eager"], tasks=["mnli-m"], model=[str(model_dir)], limit=64,
                       eval_batch_size=16, speed=False, fidelity_examples=0, store=store, progress=False)
        run(spec, log=lambda m: None)
        return read_results(store)

    expected = quality(glue, tmp_path / "a")
    got = quality(permuted, tmp_path / "b")
    key = ["backend", "metric"]
    merged = expected.merge(got, on=key, suffixes=("_glue", "_permuted"))
    scored = merged[merged["metric"].isin(["accuracy", "agreement"])]
    assert len(scored) == 3
    np.testing.assert_allclose(scored["value_permuted"], scored["value_glue"])
    assert all("reordered by name" in json.loads(e)["label_mapping"] for e in got["extra"])
    assert not expected["extra"].fillna("").str.contains("label_mapping").any()


def test_generic_label_names_are_used_in_order():
    assert loading.checkpoint_label_order(MNLI, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, "m") == (None, {})


def test_label_names_with_other_separators_match():
    task = next(t for t in GLUE_TASKS if t.name == "rte")
    order, facts = loading.checkpoint_label_order(task, {0: "NOT ENTAILMENT", 1: "Entailment"}, "m")
    assert order.tolist() == [1, 0] and facts


@pytest.mark.parametrize("names", [["yes", "maybe", "no"], ["entailment", "neutral", "LABEL_2"],
                                   ["entailment", "entailment", "neutral"]])
def test_label_names_that_do_not_match_are_refused(names):
    with pytest.raises(ModelError, match=r"names its outputs 0: .* but task 'mnli-m' has labels entailment, neutral, "
                                         r"contradiction; cannot tell which output scores which label"):
        loading.checkpoint_label_order(MNLI, dict(enumerate(names)), "m")


def test_the_cli_refuses_a_checkpoint_with_foreign_label_names(tmp_path, tokenizer, capsys):
    model_dir = save(tmp_path / "foreign", tokenizer, ["yes", "maybe", "no"])
    code = main(["run", "--model", str(model_dir), "--tasks", "mnli-m", "--no-store", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "names its outputs 0: yes, 1: maybe, 2: no (config id2label)" in err[-1]
    assert not any("Traceback" in line for line in err)
