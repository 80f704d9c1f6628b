"""PyTorch eager baseline for benches/eval_throughput.rs.

Usage: torch_eval.py MODEL TOKENS_JSON SEQLEN DTYPE THREADS [DEVICE [LABEL]] — loads the
checkpoint (a directory, or a GGUF file through transformers' `gguf_file`) with
transformers, evaluates the token ids in TOKENS_JSON in windows of
SEQLEN exactly as the reference SparseGPT `opt_eval` does (loss on logits[:-1]
against ids[1:]), and prints tokens/s, seconds and peak RSS.
"""
import json
import os
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM

model_path, tokens_json = sys.argv[1], sys.argv[2]
seqlen, dtype, threads = int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
dev = torch.device(sys.argv[6] if len(sys.argv) > 6 else "cpu")
label = sys.argv[7] if len(sys.argv) > 7 else "OPT-125M-shaped"
torch.set_num_threads(threads)
dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
if model_path.endswith(".gguf"):
    where, name = os.path.split(os.path.abspath(model_path))
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=dt)
else:
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dt)
model = model.eval().to(dev)
ids = torch.tensor(json.load(open(tokens_json)), dtype=torch.long, device=dev)
n = ids.numel() // seqlen
ids = ids[: n * seqlen].view(n, seqlen)


def run(windows):
    nlls = []
    with torch.no_grad():
        for w in windows:
            logits = model(w.unsqueeze(0)).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], w[1:])
            nlls.append(loss * seqlen)
    return torch.stack(nlls).sum()


run(ids[:1])  # warm-up
if dev.type == "cuda":
    torch.cuda.synchronize()
start = time.perf_counter()
nll = run(ids)
ppl = torch.exp(nll / (n * seqlen)).item()  # .item() waits for the device
secs = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if dev.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20  # the device's, not the host's
print(
    f"pytorch    {label}, {n} x {seqlen} tokens, {dtype}, torch {torch.__version__} "
    f"({threads} threads, {dev}): {n * seqlen / secs:.0f} tokens/s, {secs:.2f} s, peak {'CUDA' if dev.type == 'cuda' else 'RSS'} {peak:.0f} MiB, ppl {ppl:.2f}"
)
