"""PyTorch baseline for benches/prune_throughput.rs: the reference SparseGPT
(`sparsegpt.py` + `opt.py`'s `opt_sequential`, IST-DASLab) written out plainly,
run on the same checkpoint and calibration windows at 50% sparsity + 4 bits.

Usage: torch_sparsegpt.py MODEL_DIR THREADS [DEVICE]   (reads MODEL_DIR/windows.json;
DEVICE cpu (default) or cuda, where the reference keeps the model on the host and
moves one layer at a time to the GPU, as `opt_sequential` does)
"""
import json
import math
import resource
import sys
import time

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM

model_dir, threads = sys.argv[1], int(sys.argv[2])
dev = torch.device(sys.argv[3] if len(sys.argv) > 3 else "cpu")
torch.set_num_threads(threads)


def now():
    # CUDA work is asynchronous: a timer reads the clock only once the device is idle.
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()

timers = {"hessian": 0.0, "obs": 0.0, "forward": 0.0}


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class Quantizer:
    def __init__(self, bits):
        self.maxq = torch.tensor(2**bits - 1, device=dev)

    def find_params(self, x):
        tmp = torch.zeros(x.shape[0], device=dev)
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        both = (xmin == 0) & (xmax == 0)
        xmin[both], xmax[both] = -1, +1
        self.scale = ((xmax - xmin) / self.maxq).reshape(-1, 1)
        self.zero = torch.round(-xmin.reshape(-1, 1) / self.scale)


class SparseGPT:
    def __init__(self, layer):
        self.layer = layer
        self.rows, self.columns = layer.weight.shape
        self.H = torch.zeros((self.columns, self.columns), device=dev)
        self.nsamples = 0

    def add_batch(self, inp):
        t0 = now()
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())
        timers["hessian"] += now() - t0

    def fasterprune(self, sparsity, quantizer, blocksize=128, percdamp=0.01):
        W = self.layer.weight.data.clone().float()
        quantizer.find_params(W)
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        Losses = torch.zeros(self.rows, device=dev)
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                q = w.clone()
                q[mask1[:, i]] = 0
                q = quantize(q.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            Losses += torch.sum(Losses1, 1) / 2
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        self.layer.weight.data = W.to(self.layer.weight.dtype)


@torch.no_grad()
def main():
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    windows = torch.tensor(json.load(open(f"{model_dir}/windows.json")), dtype=torch.long)
    layers = model.model.decoder.layers
    # The embeddings go to the device for the capture pass, the layers one at a time.
    model.model.decoder.embed_tokens.to(dev)
    model.model.decoder.embed_positions.to(dev)
    windows = windows.to(dev)
    start = now()
    cache = {"inps": [], "kwargs": None}

    class Catcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, inp, *args, **kwargs):
            cache["inps"].append(inp)
            cache["kwargs"] = kwargs
            raise ValueError

    layers[0] = Catcher(layers[0])
    for w in windows:
        try:
            model(w.unsqueeze(0))
        except ValueError:
            pass
    layers[0] = layers[0].module
    inps, kwargs = cache["inps"], cache["kwargs"]

    def run(layer, xs):
        t0 = now()
        h0 = timers["hessian"]
        out = []
        for x in xs:
            o = layer(x, **kwargs)
            out.append(o[0] if isinstance(o, tuple) else o)
        timers["forward"] += now() - t0 - (timers["hessian"] - h0)
        return out

    per_layer = []
    for layer in layers:
        t_layer = now()
        layer.to(dev)
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        gpts = {n: SparseGPT(m) for n, m in subset.items()}
        handles = [
            subset[n].register_forward_hook(lambda m, inp, out, n=n: gpts[n].add_batch(inp[0].data))
            for n in subset
        ]
        run(layer, inps)
        for h in handles:
            h.remove()
        t0 = now()
        for n in gpts:
            gpts[n].fasterprune(0.5, Quantizer(4))
        timers["obs"] += now() - t0
        inps = run(layer, inps)
        layer.to("cpu")
        per_layer.append(now() - t_layer)
    total = now() - start
    busy = sum(timers.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        peak_dev = torch.cuda.max_memory_allocated() / 2**20
        print(f"pytorch    peak CUDA memory allocated {peak_dev:.0f} MiB on {torch.cuda.get_device_name()}")
    print(
        f"pytorch    same job, torch {torch.__version__} ({threads} threads, {dev}): total {total:.2f} s; per layer: "
        + " ".join(f"{s:.2f}" for s in per_layer)
    )
    print(
        "  "
        + ", ".join(f"{k} {v:.2f} s ({100 * v / busy:.0f}%)" for k, v in timers.items())
        + f"; peak RSS {peak:.0f} MiB"
    )


main()
