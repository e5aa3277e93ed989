#!/usr/bin/env python3
"""Logits of the shipped standard model (models/xlkv-gutenberg-standard) computed by Hugging Face transformers, for
tests/cli_default_models.sh: the model files xlkv's trainer wrote must be an ordinary Llama checkpoint that another
implementation reads to the same numbers.

Run from the repository root (needs torch (CPU) and transformers):
    python3 scripts/make_default_model_fixtures.py
Writes tests/fixtures/default_models/standard_logits.json: {"ids": [...], "rows": [positions], "logits": [[vocab]]}
for a fixed id sequence (the tokenizer's encoding of a sentence, BOS first), positions 0, 7 and the last, computed in
float32 from the bf16 weights (eager attention)."""
import json
import os

import torch
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

MODEL = "models/xlkv-gutenberg-standard"
OUT = "tests/fixtures/default_models/standard_logits.json"
TEXT = "The old man sat by the fire and looked at the letter for a long time."


def main():
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    ids = tok.encode(TEXT).ids
    if not ids or ids[0] != 1:  # BOS first (id 1), as xlkv's -p does
        ids = [1] + [i for i in ids if i != 1]
    # the LCKV fields (layer_types as a kv_src string, forward/backward passes) are xlkv's; a standard map is a plain
    # Llama, so transformers gets the config without them
    with open(os.path.join(MODEL, "config.json")) as f:
        fields = json.load(f)
    assert fields["layer_types"] == "_".join(str(i) for i in range(fields["num_hidden_layers"])), "not a standard map"
    for key in ("layer_types", "forward_passes", "backward_passes", "sliding_window", "force_nodiag"):
        fields.pop(key, None)
    config = LlamaConfig(**fields)
    model = LlamaForCausalLM.from_pretrained(MODEL, config=config, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    rows = [0, 7, len(ids) - 1]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"model": MODEL, "text": TEXT, "ids": ids, "rows": rows,
                   "logits": [[round(float(x), 6) for x in logits[r]] for r in rows]}, f)
    print(f"{OUT}: {len(ids)} ids, rows {rows}, max |logit| {logits.abs().max().item():.3f}")


if __name__ == "__main__":
    main()
