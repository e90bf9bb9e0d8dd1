"""The fbgemm-int8 backend: against dense on padded batches, masks, availability, and a whole run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import cython_kernels as ck
from harness import RunSpec, run
from harness.execution.runner import prepare_model
from plugins.fbgemm_int8 import FbgemmInt8, bool_mask

from conftest import tiny_classifier

ROOT = Path(__file__).resolve().parents[1]
needs_kernels = pytest.mark.skipif(not ck.AVAILABLE, reason=f"cython_kernels unavailable: {ck.UNAVAILABLE_REASON}")

# Measured (tests/test_kernels.py has the details): relative L2 error <= 0.016 (pv=int8) and 0.011
# (pv=float) against SDPA, mean cosine >= 0.99985; the thresholds leave about 2x margin.
TOLERANCE = {"int8": (0.03, 0.9995), "float": (0.02, 0.9998)}


class _Module(torch.nn.Module):
    is_causal = False


def padded_inputs(batch: int, heads: int, seq: int, dim: int, lengths: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, 3, heads, dim, generator=g)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))  # the non-contiguous views BERT passes
    valid = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    return q, k, v, valid[:, None, None, :].expand(batch, 1, seq, seq)  # sdpa_mask's layout


def compare(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Relative L2 error and mean cosine over the real tokens (rows: (token, hidden))."""
    valid = mask[:, 0, 0, :]
    o, r = out[valid].flatten(1), ref[valid].flatten(1)
    return float((o - r).norm() / r.norm()), float(torch.nn.functional.cosine_similarity(o, r, dim=-1).mean())


@needs_kernels
@pytest.mark.parametrize("pv", ["int8", "float"])
@pytest.mark.parametrize(("shape", "lengths"), [((2, 2, 5, 8), [5, 2]), ((8, 12, 128, 32), [128, 97, 64, 33, 12, 5, 128, 2])],
                         ids=["tiny", "minilm"])
def test_attention_matches_dense_on_padded_batches(shape, lengths, pv):
    q, k, v, mask = padded_inputs(*shape, lengths)
    scaling = shape[-1] ** -0.5
    out, weights = FbgemmInt8(pv=pv).attention(_Module(), q, k, v, mask, scaling=scaling)
    ref = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=scaling)[0]
    assert weights is None and out.shape == ref.shape and out.is_contiguous()
    rel, cosine = compare(out, ref, mask)
    assert rel < TOLERANCE[pv][0] and cosine > TOLERANCE[pv][1], (rel, cosine)


@needs_kernels
def test_in_a_model_logits_stay_close_to_dense(registry):
    base = tiny_classifier()
    ids = torch.randint(1000, 5000, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.inference_mode():
        ref = prepare_model(base, registry.resolve("dense"))(**batch).logits
        for spec in ("fbgemm-int8", "fbgemm-int8:pv=float,smooth_k=true"):
            out = prepare_model(base, registry.resolve(spec))(**batch).logits
            torch.testing.assert_close(out, ref, atol=0.02 * float(ref.abs().max()), rtol=0)
            assert not torch.equal(out, ref)  # it really ran in int8


def test_bool_mask_passes_any_bool_mask_and_refuses_additive_ones():
    _, _, _, mask = padded_inputs(2, 1, 4, 2, [4, 3])
    causal = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    assert bool_mask(None) is None
    assert bool_mask(mask) is mask and bool_mask(causal) is causal
    with pytest.raises(TypeError, match="bool"):
        bool_mask(torch.zeros(1, 1, 4, 4))


def window_mask(lengths: list[int], seq: int, window: int) -> torch.Tensor:
    """ModernBERT's local-layer mask: key padding and |i - j| <= window // 2, (batch, 1, seq, seq) bool."""
    i = torch.arange(seq)
    near = (i[:, None] - i[None, :]).abs() <= window // 2
    valid = i[None, :] < torch.tensor(lengths)[:, None]
    return (near[None] & valid[:, None, :])[:, None]


@needs_kernels
@pytest.mark.parametrize("kernel", ["online", "materialize"])
@pytest.mark.parametrize("pv", ["int8", "float"])
@pytest.mark.parametrize("which", ["window", "causal"])
def test_masks_that_differ_between_query_rows_match_dense(kernel, pv, which):
    q, k, v, _ = padded_inputs(3, 2, 70, 32, [70, 50, 9], seed=3)
    mask = window_mask([70, 50, 9], 70, 16) if which == "window" else (
        torch.ones(70, 70, dtype=torch.bool).tril()[None, None].expand(3, 1, 70, 70))
    k[:, :, 40:] *= 3.0  # far keys whose scores would dominate if attended to
    out, _ = FbgemmInt8(pv=pv, kernel=kernel).attention(_Module(), q, k, v, mask, scaling=32 ** -0.5)
    ref = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=32 ** -0.5)[0]
    rows = mask[:, 0].any(-1)  # query rows with an allowed key
    o, r = out[rows].flatten(1), ref[rows].flatten(1)
    assert float((o - r).norm() / r.norm()) < TOLERANCE[pv][0]
    assert float(torch.nn.functional.cosine_similarity(o, r, dim=-1).mean()) > TOLERANCE[pv][1]


@needs_kernels
def test_dropout_is_refused_and_run_facts_name_the_isa():
    q, k, v, mask = padded_inputs(1, 1, 3, 8, [3])
    with pytest.raises(NotImplementedError, match="dropout"):
        FbgemmInt8().attention(_Module(), q, k, v, mask, dropout=0.1)
    facts = FbgemmInt8().run_facts()
    assert facts["fbgemm_isa"] == ck.cpu_features()["isa"] and facts["fbgemm_own_packing"] in {"true", "false"}


def test_params_are_validated(registry):
    assert registry.resolve("fbgemm-int8:pv=float").spec == "fbgemm-int8:pv=float"
    with pytest.raises(Exception, match="one of int8, float"):
        registry.resolve("fbgemm-int8:pv=int4")


MISSING_EXTENSION = """
import json, sys
sys.modules["cython_kernels._gemm"] = None  # as if the extension had not been built
import torch
from harness import load_registry
from harness.cli import main
registry = load_registry(entry_points=False)
reasons = {spec: registry.resolve(spec).unavailable_reason()
           for spec in ("dense", "topk:k=4", "topk:k=4,scorer=fbgemm", "fbgemm-int8")}
q = torch.randn(1, 2, 6, 8)
out = registry.resolve("topk:k=4").parts[0].attention(None, q, q, q, None)[0]
main(["backends", "--check"])
print(json.dumps({"reasons": reasons, "failures": [str(f) for f in registry.failures], "topk_ok": out.shape == (1, 6, 2, 8)}))
"""


def test_missing_extension_leaves_every_other_backend_working():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(MISSING_EXTENSION)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    reasons = report["reasons"]
    assert reasons["dense"] is None and reasons["topk:k=4"] is None and report["topk_ok"]
    assert reasons["fbgemm-int8"].startswith("fbgemm-int8: extension cython_kernels._gemm not built")
    assert reasons["topk:k=4,scorer=fbgemm"].startswith("topk: scorer=fbgemm needs cython_kernels: extension")
    assert report["failures"] == []
    listing = "\n".join(lines[:-1])
    assert "; UNAVAILABLE: extension cython_kernels._gemm not built" in listing.split("fbgemm-int8  —")[1]


@needs_kernels
def test_a_run_stores_every_kind_of_row_for_both_native_backends(tmp_path, tiny_model_dir):
    spec = RunSpec(backends=["dense", "fbgemm-int8", "topk:k=4,scorer=fbgemm"], tasks=["sst2"],
                   model=[str(tiny_model_dir)], limit=16, eval_batch_size=8, batch_size=2, seq_len=16, repeats=1,
                   warmup=0, fidelity_examples=8, store=tmp_path / "store", progress=False)
    result = run(spec, log=lambda message: None)
    assert result.skipped == {}
    rows = result.rows
    fidelity = {}
    for backend in ("fbgemm-int8", "topk:k=4,scorer=fbgemm"):
        mine = rows[rows["backend"] == backend]
        assert {"quality", "agreement", "fidelity", "speed"} <= set(mine["category"])
        assert json.loads(mine["extra"].iloc[0])["fbgemm_isa"] == ck.cpu_features()["isa"]
        fidelity[backend] = mine[mine["category"] == "fidelity"].set_index("metric")["value"]
    assert fidelity["fbgemm-int8"]["attn_cosine_mean"] > 0.999
    # The tiny random model attends almost uniformly: 4 keys hold little mass, but they are the right ones.
    assert fidelity["topk:k=4,scorer=fbgemm"]["topk_recall"] > 0.9
