"""Reference perplexity with transformers, following the SparseGPT `datautils` +
`opt_eval`/`llama_eval` protocol, for cross-checking `sparselab eval`.

Usage: ppl_ref.py MODEL TEXT_FILE SEQLEN NWINDOWS [--named-wikitext] [--logits OUT T]
  MODEL: a model directory, or a .gguf file (loaded by transformers' GGUF
  support, which dequantizes it to float32; needs the gguf package).
  --logits OUT T: also write the input ids and float32 logits of the first T
  tokens (one sequence) to the safetensors file OUT.
  --named-wikitext: TEXT_FILE is a wikitext raw file; rebuild the HF dataset rows
  (lines with their "\n", whitespace-only lines as "") and join them with "\n\n",
  tokenized with the tokenizer's defaults (one BOS), as the reference does.
  Otherwise the file is tokenized as is without special tokens.
Prints JSON {"ppl", "windows", "tokens"}.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, text_file, seqlen, nwin = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
named = "--named-wikitext" in sys.argv
text = open(text_file, encoding="utf-8").read()
load_args = {}
if model_dir.endswith(".gguf"):
    model_dir, load_args["gguf_file"] = os.path.split(os.path.abspath(model_dir))
tok = AutoTokenizer.from_pretrained(model_dir, **load_args)
if named:
    rows = [l if l.strip() else "" for l in text.splitlines(keepends=True)]
    ids = tok("\n\n".join(rows), return_tensors="pt").input_ids
else:
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **load_args).eval()
if "--logits" in sys.argv:
    from safetensors.torch import save_file

    at = sys.argv.index("--logits")
    out, t = sys.argv[at + 1], int(sys.argv[at + 2])
    with torch.no_grad():
        first = ids[:, :t]
        save_file(
            {"input_ids": first.to(torch.int64).contiguous(), "logits": model(first).logits.float().contiguous()},
            out,
        )
n = min(ids.numel() // seqlen, nwin)
nlls = []
with torch.no_grad():
    for i in range(n):
        batch = ids[:, i * seqlen : (i + 1) * seqlen]
        logits = model(batch).logits
        shift_logits = logits[:, :-1, :].float()
        shift_labels = batch[:, 1:]
        loss = torch.nn.CrossEntropyLoss()(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1))
        nlls.append(loss.float() * seqlen)
ppl = torch.exp(torch.stack(nlls).sum() / (n * seqlen)).item()
print(json.dumps({"ppl": ppl, "windows": n, "tokens": ids.numel()}))
