"""Load a directory written by `sparselab` (Model::save / `prune --save`) with
transformers and report its perplexity, to check that the saved checkpoint loads
unchanged outside sparselab.

Usage: load_saved.py MODEL_DIR TEXT_FILE SEQLEN NWINDOWS

The text file is tokenized as is, without special tokens (as sparselab does for a
local file); NWINDOWS non-overlapping windows of SEQLEN tokens from token 0;
per window the mean cross-entropy of logits[:-1] against ids[1:] times SEQLEN;
ppl = exp(sum / (windows * SEQLEN)) — the SparseGPT reference protocol.

Prints JSON {"ppl", "windows", "missing", "unexpected", "mismatched", "dtype",
"zeros"}: the loading report must be empty for a faithful save; "zeros" is the
fraction of exactly-zero weights in the decoder's linear layers.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, text_file, seqlen, nwin = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(text_file, encoding="utf-8").read()
tok = AutoTokenizer.from_pretrained(model_dir)
ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
model, info = AutoModelForCausalLM.from_pretrained(
    model_dir, dtype=torch.float32, output_loading_info=True
)
model.eval()

zeros, total = 0, 0
for name, p in model.named_parameters():
    if name.endswith(".weight") and p.dim() == 2 and ".layers." in name:
        zeros += int((p == 0).sum())
        total += p.numel()

n = min(ids.numel() // seqlen, nwin)
nlls = []
with torch.no_grad():
    for i in range(n):
        batch = ids[:, i * seqlen : (i + 1) * seqlen]
        logits = model(batch).logits
        shift_logits = logits[:, :-1, :].float()
        shift_labels = batch[:, 1:]
        loss = torch.nn.CrossEntropyLoss()(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1)
        )
        nlls.append(loss.float() * seqlen)
ppl = torch.exp(torch.stack(nlls).sum() / (n * seqlen)).item()
print(
    json.dumps(
        {
            "ppl": ppl,
            "windows": n,
            "missing": sorted(info["missing_keys"]),
            "unexpected": sorted(info["unexpected_keys"]),
            "mismatched": [list(map(str, m)) for m in info["mismatched_keys"]],
            "dtype": str(next(model.parameters()).dtype),
            "zeros": zeros / max(total, 1),
        }
    )
)
