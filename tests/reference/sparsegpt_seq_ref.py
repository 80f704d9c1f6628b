#!/usr/bin/env python3
"""The reference's sequential SparseGPT on a whole model (OPT or Llama), in float32 or
float64, to compare sparselab's per-linear losses and perplexity with it.

A plain port of IST-DASLab/sparsegpt: `sparsegpt.py` (SparseGPT.add_batch, fasterprune),
`quant.py` (Quantizer, perchannel=True, sym=False, mse=False, as `opt_sequential`
configures it) and `opt.py`/`llama.py` (`opt_sequential`, `llama_sequential`, `opt_eval`):

  - layer 0's inputs are caught from the model's own forward (the reference's Catcher),
    one calibration window per batch;
  - per decoder layer: every nn.Linear gets a forward hook, the layer runs over all
    windows (Hessians: running mean `H *= n/(n+t); n += t; X *= sqrt(2/n); H += X Xᵀ`),
    then `fasterprune` for each linear in `named_modules` order, each from the Hessian of
    the un-pruned layer (not GPTQ's true-sequential order), then the layer runs again over
    the windows to give the next layer's inputs;
  - with --bits the quantizer is found once on the un-pruned W before the sweep.

The only change to the reference is the dtype: with --dtype float64 the model, the
Hessians and the OBS sweep are all float64 (the reference casts to float32 with
`.float()`). RoPE tables stay as transformers defines them (angle in float32, cast).

The decoder layers are called with the keyword arguments the model passes to layer 0
(Llama: attention_mask=None with sdpa, whose is_causal then applies the causal mask,
position_ids and position_embeddings=rotary_emb(hidden, position_ids); OPT:
attention_mask, position_ids). Before pruning a self-check runs the first window
layer by layer + final norm + head against `model(ids).logits` and checks causality
(changing the last token changes no earlier hidden state); it fails above 1e-4.

Perplexity (--eval) follows `opt_eval`: the file tokenized as is without special
tokens, the first W windows of seqlen tokens, per window mean CE of logits[:-1] vs
ids[1:] times seqlen, ppl = exp(sum / (W * seqlen)); run layer by layer as above.

Usage:
  sparsegpt_seq_ref.py MODEL WINDOWS.json [--make-windows TEXT --nsamples N --seed S]
      [--sparsity S] [--bits B] [--prunen N --prunem M] [--blocksize 128] [--percdamp 0.01]
      [--dtype float32|float64] [--threads N] [--layers K]
      [--eval TEXT --seqlen L --windows W] [--out OUT.json] [--compare SPARSELAB_REPORT.json]
      [--save-linears W.safetensors] [--digits-split]

MODEL is a model directory or a .gguf file (loaded with gguf_file=, dequantized to
float32). WINDOWS.json is a list of lists of token ids; with --make-windows it is first
written from TEXT by the reference sampler (tokenized as is without special tokens,
`random.seed(seed)`, per sample `i = random.randint(0, ntokens - seqlen - 1)`, window
ids[i:i+seqlen]), which sparselab reproduces for `--calib TEXT --seed S`. For the
SmolLM2 GGUF add --digits-split: transformers' GGUF tokenizer lacks SmolLM's digit split,
so "½" (3 times in wiki.valid.raw, once in wiki.test.raw) would shift the windows after it.
--compare prints the per-linear relative difference to a `sparselab prune --report`;
`sparsegpt_seq_ref.py compare A.json B.json` does the same for two finished runs (either
format), e.g. the float32 reference against the float64 one.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn as nn


# ---------------------------------------------------------------- quant.py

def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class Quantizer:
    """quant.py Quantizer, configured as opt_sequential does: perchannel, asymmetric, no mse."""

    def __init__(self, bits):
        self.maxq = torch.tensor(2**bits - 1)
        self.scale = None

    def ready(self):
        return self.scale is not None and bool(torch.all(self.scale != 0))

    def find_params(self, x):
        x = x.flatten(1)
        tmp = torch.zeros(x.shape[0], dtype=x.dtype)
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        both = (xmin == 0) & (xmax == 0)
        xmin[both] = -1
        xmax[both] = +1
        self.scale = ((xmax - xmin) / self.maxq).reshape(-1, 1)
        self.zero = torch.round(-xmin / self.scale.flatten()).reshape(-1, 1)


# ---------------------------------------------------------------- sparsegpt.py

class SparseGPT:
    def __init__(self, layer, dtype):
        self.layer = layer
        self.dtype = dtype
        self.rows, self.columns = layer.weight.shape
        self.H = torch.zeros((self.columns, self.columns), dtype=dtype)
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.to(self.dtype)  # reference: inp.float()
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01, quantizer=None):
        W = self.layer.weight.data.clone().to(self.dtype)  # reference: W.float()

        if quantizer is not None and not quantizer.ready():
            quantizer.find_params(W)

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        self.dead = int(dead.sum())
        H[dead, dead] = 1
        W[:, dead] = 0

        Losses = torch.zeros(self.rows, dtype=self.dtype)

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        mask = None

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                if mask is not None:
                    mask1 = mask[:, i1:i2]
                else:
                    tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                    thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                    mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)

                q = w.clone()
                q[mask1[:, i]] = 0

                if quantizer is not None:
                    q = quantize(q.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()

                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            Losses += torch.sum(Losses1, 1) / 2

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        return torch.sum(Losses).item()


# ---------------------------------------------------------------- model plumbing

def split_model_path(path):
    if path.endswith(".gguf"):
        d, f = os.path.split(os.path.abspath(path))
        return d, {"gguf_file": f}
    return path, {}


def load_model(path, dtype):
    from transformers import AutoModelForCausalLM

    d, extra = split_model_path(path)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa", **extra)
    model.config.use_cache = False
    return model.eval().to(dtype)


def load_tokens(model_path, text_file, digits_split=False):
    """The file tokenized as is, without special tokens, as sparselab tokenizes a local file."""
    from transformers import AutoTokenizer

    d, extra = split_model_path(model_path)
    tok = AutoTokenizer.from_pretrained(d, **extra)
    if digits_split:
        # transformers' GGUF loader drops SmolLM's Digits(individual_digits) step, which
        # the model's own tokenizer (and sparselab, and llama.cpp) have; restore it as
        # tests/reference/gguf_tokens.py does (it matters for "½" in WikiText).
        from tokenizers import pre_tokenizers

        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    # newline="" keeps "\r" as it is, as sparselab's read does.
    with open(text_file, encoding="utf-8", newline="") as f:
        text = f.read()
    return tok(text, add_special_tokens=False)["input_ids"]


class Arch:
    """The decoder layers, how to catch layer 0's inputs, and the head after the last layer."""

    def __init__(self, model):
        self.model = model
        kind = model.config.model_type
        if kind == "opt":
            dec = model.model.decoder
            self.layers = dec.layers

            def head(h):
                if dec.final_layer_norm is not None:
                    h = dec.final_layer_norm(h)
                if dec.project_out is not None:
                    h = dec.project_out(h)
                return model.lm_head(h)
        elif hasattr(model, "model") and hasattr(model.model, "layers") and hasattr(model.model, "norm"):
            # Llama and its relatives (the gptq/sparsegpt llama.py layout)
            self.layers = model.model.layers

            def head(h):
                return model.lm_head(model.model.norm(h))
        else:
            raise SystemExit(f"unsupported model_type {kind}")
        self.kind = kind
        self.head = head
        self.kwargs = None

    def layer0_inputs(self, ids):
        """The hidden states layer 0 receives for ids [1, seqlen] (the reference's Catcher),
        and remembers the keyword arguments the model passed with them."""
        caught = {}

        class Catcher(nn.Module):
            def __init__(self, module):
                super().__init__()
                self.module = module

            def forward(self, inp, *args, **kwargs):
                caught["inp"] = inp
                caught["kwargs"] = kwargs
                raise ValueError

        self.layers[0] = Catcher(self.layers[0])
        try:
            self.model(ids)
        except ValueError:
            pass
        finally:
            self.layers[0] = self.layers[0].module
        kw = {k: caught["kwargs"][k] for k in ("attention_mask", "position_ids", "position_embeddings") if k in caught["kwargs"]}
        if self.kwargs is None:
            self.kwargs = kw
        return caught["inp"]

    def run_layer(self, layer, h):
        out = layer(h, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out

    def describe_kwargs(self):
        def d(v):
            if v is None:
                return "None"
            if isinstance(v, torch.Tensor):
                return f"tensor{tuple(v.shape)} {v.dtype}"
            if isinstance(v, tuple):
                return "(" + ", ".join(d(x) for x in v) + ")"
            return type(v).__name__
        return {k: d(v) for k, v in self.kwargs.items()}


def forward_rest(arch, h, start):
    for layer in arch.layers[start:]:
        h = arch.run_layer(layer, h)
    return h


@torch.no_grad()
def self_check(arch, ids):
    """Layer by layer + head against model(ids).logits, and causality."""
    h = forward_rest(arch, arch.layer0_inputs(ids), 0)
    logits = arch.head(h)
    full = arch.model(ids).logits
    logit_diff = (logits - full).abs().max().item()
    ids2 = ids.clone()
    ids2[0, -1] = (ids2[0, -1] + 1) % arch.model.config.vocab_size
    h2 = forward_rest(arch, arch.layer0_inputs(ids2), 0)
    causal_diff = (h2[0, :-1] - h[0, :-1]).abs().max().item()
    last_diff = (h2[0, -1] - h[0, -1]).abs().max().item()
    return {"logits_max_abs_diff": logit_diff, "earlier_positions_max_abs_diff": causal_diff, "last_position_max_abs_diff": last_diff}


# ---------------------------------------------------------------- sequential SparseGPT

@torch.no_grad()
def sequential(arch, windows, args, dtype, saved=None):
    inps = [arch.layer0_inputs(w.unsqueeze(0)) for w in windows]
    nlayers = len(arch.layers) if args.layers is None else min(args.layers, len(arch.layers))
    results = []
    for i in range(nlayers):
        t0 = time.perf_counter()
        layer = arch.layers[i]
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        gpts = {n: SparseGPT(m, dtype) for n, m in subset.items()}
        handles = [
            subset[n].register_forward_hook(lambda m, inp, out, n=n: gpts[n].add_batch(inp[0].data))
            for n in subset
        ]
        for x in inps:
            arch.run_layer(layer, x)
        for h in handles:
            h.remove()
        for n, g in gpts.items():
            quantizer = Quantizer(args.bits) if args.bits is not None and args.bits < 16 else None
            loss = g.fasterprune(
                args.sparsity, prunen=args.prunen, prunem=args.prunem,
                blocksize=args.blocksize, percdamp=args.percdamp, quantizer=quantizer,
            )
            W = g.layer.weight.data
            results.append({
                "layer": i, "linear": n, "loss": loss, "rows": g.rows, "cols": g.columns,
                "sparsity": (W == 0).double().mean().item(), "dead_columns": g.dead,
            })
            if saved is not None:
                saved[f"layer{i}.{n}"] = W.clone().contiguous()
            print(f"{i} {n} error {loss:.9g}", file=sys.stderr, flush=True)
        inps = [arch.run_layer(layer, x) for x in inps]
        print(f"layer {i} done in {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    return results


@torch.no_grad()
def perplexity(arch, tokens, seqlen, nwindows):
    n = len(tokens) // seqlen
    if nwindows is not None:
        n = min(n, nwindows)
    ids = torch.tensor(tokens[: n * seqlen], dtype=torch.long).reshape(n, seqlen)
    nlls = []
    for w in ids:
        w = w.unsqueeze(0)
        logits = arch.head(forward_rest(arch, arch.layer0_inputs(w), 0))
        loss = nn.functional.cross_entropy(logits[0, :-1], w[0, 1:])
        nlls.append(loss.double() * seqlen)
    return math.exp(torch.stack(nlls).sum().item() / (n * seqlen)), n


# ---------------------------------------------------------------- comparison

def ppl_value(p):
    # sparselab's report maps each --eval dataset to its evaluation (under "eval");
    # ours is one number
    if isinstance(p, dict):
        v = next(iter(p.values()), None)
        return v.get("ppl") if isinstance(v, dict) else v
    return p


def compare(ours, report_path, labels=("reference", "sparselab")):
    """Per linear (s - r) / r of the report's losses s against ours r, per layer and overall."""
    with open(report_path) as f:
        rep = json.load(f)
    theirs = {(r["layer"], r["linear"]): r for r in rep["linears"]}
    rows = []
    print(f"{'layer':>5} {'linear':<22} {labels[0]:>14} {labels[1]:>14} {'rel diff':>10}")
    for r in ours:
        t = theirs.get((r["layer"], r["linear"]))
        if t is None:
            continue
        s = t["loss"]
        rel = (s - r["loss"]) / r["loss"] if r["loss"] != 0 else float("nan")
        rows.append({"layer": r["layer"], "linear": r["linear"], labels[0]: r["loss"], labels[1]: s, "rel_diff": rel})
        d, ours_dead = t.get("dead_columns"), r.get("dead_columns")
        note = f"  dead columns {ours_dead} vs {d}" if None not in (d, ours_dead) and d != ours_dead else ""
        print(f"{r['layer']:>5} {r['linear']:<22} {r['loss']:>14.7g} {s:>14.7g} {rel:>+10.2e}{note}")
    per_layer = {}
    for x in rows:
        per_layer.setdefault(x["layer"], []).append(x["rel_diff"])
    summary = []
    for l, v in sorted(per_layer.items()):
        summary.append({"layer": l, "max_abs_rel_diff": max(abs(a) for a in v), "mean_rel_diff": sum(v) / len(v)})
        print(f"layer {l}: max |rel diff| {summary[-1]['max_abs_rel_diff']:.2e}, mean rel diff {summary[-1]['mean_rel_diff']:+.2e}")
    v = [x["rel_diff"] for x in rows]
    overall = None
    if v:
        mean = sum(v) / len(v)
        se = math.sqrt(sum((a - mean) ** 2 for a in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
        overall = {"n": len(v), "mean_rel_diff": mean, "std_err": se, "mean_abs_rel_diff": sum(map(abs, v)) / len(v)}
        print(f"all {len(v)} linears: mean rel diff {mean:+.2e} ± {se:.1e} (std. error), mean |rel diff| {overall['mean_abs_rel_diff']:.2e}")
    return {"report": report_path, "linears": rows, "per_layer": summary, "overall": overall,
            "other_ppl": ppl_value(rep.get("eval", rep.get("ppl")))}


def compare_files(base, other):
    """`compare BASE.json OTHER.json`: two finished runs (this script's --out or sparselab's
    --report, in any mix), e.g. the float32 reference against the float64 one."""
    with open(base) as f:
        b = json.load(f)
    res = compare(b["linears"], other, labels=(os.path.basename(base)[:14], os.path.basename(other)[:14]))
    pb, po = ppl_value(b.get("eval", b.get("ppl"))), res["other_ppl"]
    if pb is not None and po is not None:
        print(f"ppl: {base} {pb:.6f}, {other} {po:.6f} ({(po - pb) / pb:+.1e})")


# ---------------------------------------------------------------- driver

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("windows", help="JSON list of lists of token ids (written first with --make-windows)")
    p.add_argument("--make-windows", metavar="TEXT")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--digits-split", action="store_true",
                   help="SmolLM2 GGUF: split digits one by one before the byte-level BPE, as the model's tokenizer does")
    p.add_argument("--sparsity", type=float, default=0.0)
    p.add_argument("--bits", type=int)
    p.add_argument("--prunen", type=int, default=0)
    p.add_argument("--prunem", type=int, default=0)
    p.add_argument("--blocksize", type=int, default=128)
    p.add_argument("--percdamp", type=float, default=0.01)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, help="prune only the first K decoder layers")
    p.add_argument("--eval", metavar="TEXT")
    p.add_argument("--seqlen", type=int, default=2048, help="window length of --make-windows and --eval")
    p.add_argument("--windows", dest="eval_windows", type=int, help="evaluate the first W windows only")
    p.add_argument("--out")
    p.add_argument("--compare", metavar="REPORT", help="a sparselab prune --report to compare the losses with")
    p.add_argument("--save-linears", metavar="FILE", help="write the compressed linears' weights here (safetensors, names layerI.LINEAR)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]

    if args.make_windows:
        tokens = load_tokens(args.model, args.make_windows, args.digits_split)
        random.seed(args.seed)
        windows = []
        for _ in range(args.nsamples):
            i = random.randint(0, len(tokens) - args.seqlen - 1)
            windows.append(tokens[i:i + args.seqlen])
        with open(args.windows, "w") as f:
            json.dump(windows, f)
    with open(args.windows) as f:
        windows = torch.tensor(json.load(f), dtype=torch.long)

    t0 = time.perf_counter()
    model = load_model(args.model, dtype)
    arch = Arch(model)
    check = self_check(arch, windows[0:1])
    check["layer_kwargs"] = arch.describe_kwargs()
    print(f"self-check: {json.dumps(check)}", file=sys.stderr)
    if check["logits_max_abs_diff"] > 1e-4 or check["earlier_positions_max_abs_diff"] > 1e-4 or check["last_position_max_abs_diff"] == 0:
        raise SystemExit("self-check failed: layer-by-layer forward differs from the model's")

    saved = {} if args.save_linears else None
    linears = sequential(arch, windows, args, dtype, saved)
    if saved is not None:
        from safetensors.torch import save_file
        save_file(saved, args.save_linears)
    out = {
        "model": args.model, "dtype": args.dtype, "threads": args.threads,
        "torch": torch.__version__,
        "settings": {k: getattr(args, k) for k in ("sparsity", "bits", "prunen", "prunem", "blocksize", "percdamp", "layers")},
        "calibration": {"windows": args.windows, "nsamples": len(windows), "seqlen": windows.shape[1]},
        "check": check,
        "linears": linears,
    }
    if args.eval:
        tokens = load_tokens(args.model, args.eval, args.digits_split)
        ppl, n = perplexity(arch, tokens, args.seqlen, args.eval_windows)
        out["ppl"] = ppl
        out["eval"] = {"file": args.eval, "seqlen": args.seqlen, "windows": n}
        print(f"ppl {ppl:.6f} ({n} windows)", file=sys.stderr)
    out["seconds"] = time.perf_counter() - t0
    if args.compare:
        out["compare"] = compare(linears, args.compare)
        if "ppl" in out and out["compare"]["other_ppl"] is not None:
            print(f"ppl: reference {out['ppl']:.6f}, sparselab {out['compare']['other_ppl']:.6f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare_files(sys.argv[2], sys.argv[3])
    else:
        main()
