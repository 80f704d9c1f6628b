"""Reference KL divergence with transformers, for cross-checking `eval_kl`.

Usage: kl_ref.py BASE_MODEL MODEL IDS_JSON
  IDS_JSON: a JSON array of windows (arrays of token ids), the windows sparselab
  evaluated. Both models run in float32; the log-softmax and KL are computed in
  float64 over the whole vocabulary, per predicted token (positions 0..t-2).
Prints JSON {"kl", "kl_max", "top1", "ppl", "base_ppl", "tokens"}.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

base_dir, model_dir, ids_file = sys.argv[1], sys.argv[2], sys.argv[3]
windows = torch.tensor(json.load(open(ids_file)), dtype=torch.long)
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
kls, agree, nll, base_nll = [], [], [], []
with torch.no_grad():
    for w in windows:
        ids = w.unsqueeze(0)
        lp = torch.log_softmax(base(ids).logits[0, :-1].double(), dim=-1)
        lq = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
        kls.append((lp.exp() * (lp - lq)).sum(-1))
        agree.append((lp.argmax(-1) == lq.argmax(-1)).double())
        target = ids[0, 1:].unsqueeze(1)
        nll.append(-lq.gather(1, target).squeeze(1))
        base_nll.append(-lp.gather(1, target).squeeze(1))
kl = torch.cat(kls)
print(
    json.dumps(
        {
            "kl": kl.mean().item(),
            "kl_max": kl.max().item(),
            "top1": torch.cat(agree).mean().item(),
            "ppl": torch.cat(nll).mean().exp().item(),
            "base_ppl": torch.cat(base_nll).mean().exp().item(),
            "tokens": kl.numel(),
        }
    )
)
