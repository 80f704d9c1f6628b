"""Reference perplexity with transformers, following the SparseGPT `datautils` +
`opt_eval`/`llama_eval` protocol, for cross-checking `sparselab eval`.

Usage: ppl_ref.py MODEL_DIR TEXT_FILE SEQLEN NWINDOWS [--named-wikitext]
  --named-wikitext: TEXT_FILE is a wikitext raw file; rebuild the HF dataset rows
  (lines with their "\n", whitespace-only lines as "") and join them with "\n\n",
  tokenized with the tokenizer's defaults (one BOS), as the reference does.
  Otherwise the file is tokenized as is without special tokens.
Prints JSON {"ppl", "windows", "tokens"}.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, text_file, seqlen, nwin = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
named = "--named-wikitext" in sys.argv
text = open(text_file, encoding="utf-8").read()
tok = AutoTokenizer.from_pretrained(model_dir)
if named:
    rows = [l if l.strip() else "" for l in text.splitlines(keepends=True)]
    ids = tok("\n\n".join(rows), return_tensors="pt").input_ids
else:
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
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
