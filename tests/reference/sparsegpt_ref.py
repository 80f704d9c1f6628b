#!/usr/bin/env python3
"""Independent numpy port of the reference compression numerics, for tests/it/compress.rs.

A line-by-line port, in float32 as the references run, of
  - IST-DASLab/sparsegpt  sparsegpt.py  SparseGPT.add_batch / fasterprune
  - IST-DASLab/gptq       gptq.py       GPTQ.fasterquant (groupsize, actorder, static_groups)
  - IST-DASLab/gptq       quant.py      quantize / Quantizer (perchannel=True)
  - locuslab/wanda        lib/layerwrapper.py WrappedGPT.add_batch (scaler_row)
                          lib/prune.py  prune_magnitude / prune_wanda (per linear)
torch ops are replaced by their numpy equivalents; the control flow is the reference's.

Deliberate additions, marked "EXT" below, each also in the Rust implementation:
  - mixed precision: a bit width per input column; one Quantizer per distinct width,
    column j quantized with the Quantizer of its width;
  - the pruning mask is collected and written out (the references only apply it);
  - n:m ties are broken by the lowest index (torch.topk leaves ties unspecified).
  - magnitude pruning at sparsity 0 prunes nothing (the reference would prune the minimum).

Usage: sparsegpt_ref.py DIR. DIR holds case.json and the inputs it names as .npy files
(W.npy, X.npy, H.npy, scaler.npy, optional col_bits.npy); outputs are written to DIR:
H_ref.npy, scaler_ref.npy, W_out.npy, mask.npy (uint8), result.json (loss), and for the
tests' tie analysis tie.npy (per weight, the distance in grid steps of the value given to
the quantizer from a rounding boundary; 1e30 where nothing was quantized) and perm.npy
(the sweep order: act_order's permutation, else the identity).
"""

import json
import math
import os
import sys

import numpy as np

f32 = np.float32


# ---------------------------------------------------------------- quant.py

def quantize(x, scale, zero, maxq):
    q = np.clip(np.round(x / scale) + zero, f32(0), maxq)
    return scale * (q - zero)


class Quantizer:
    def configure(self, bits, perchannel=True, sym=True, mse=False, norm=2.4, grid=100, maxshrink=.8):
        assert perchannel, "only per-channel weight quantization is ported"
        self.maxq = f32(2 ** bits - 1)
        self.sym = sym
        self.mse = mse
        self.norm = norm
        self.grid = grid
        self.maxshrink = maxshrink
        self.scale = np.zeros(1, dtype=f32)
        self.zero = np.zeros(1, dtype=f32)

    def find_params(self, x, weight=True):
        assert weight
        x = x.reshape(x.shape[0], -1)

        tmp = np.zeros(x.shape[0], dtype=f32)
        xmin = np.minimum(x.min(1), tmp)
        xmax = np.maximum(x.max(1), tmp)

        if self.sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            tmp = xmin < 0
            if np.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1

        self.scale = (xmax - xmin) / self.maxq
        if self.sym:
            self.zero = np.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = np.round(-xmin / self.scale)

        if self.mse:
            best = np.full([x.shape[0]], np.inf, dtype=f32)
            for i in range(int(self.maxshrink * self.grid)):
                p = f32(1 - i / self.grid)  # torch: python float times a float32 tensor
                xmin1 = p * xmin
                xmax1 = p * xmax
                scale1 = (xmax1 - xmin1) / self.maxq
                zero1 = np.round(-xmin1 / scale1) if not self.sym else self.zero
                q = quantize(x, scale1[:, None], zero1[:, None], self.maxq)
                q -= x
                q = np.abs(q)
                q = q ** f32(self.norm)
                err = np.sum(q, 1)
                tmp = err < best
                if np.any(tmp):
                    best[tmp] = err[tmp]
                    self.scale[tmp] = scale1[tmp]
                    self.zero[tmp] = zero1[tmp]

        self.scale = self.scale.reshape(-1, 1).astype(f32)
        self.zero = self.zero.reshape(-1, 1).astype(f32)

    def ready(self):
        return bool(np.all(self.scale != 0))


class ColumnQuantizers:
    """EXT: one Quantizer per distinct bit width; column j uses that of col_bits[j]."""

    def __init__(self, col_bits, **cfg):
        self.col_bits = np.asarray(col_bits)
        self.cfg = cfg
        self.tie = np.full((0, len(self.col_bits)), np.inf)
        self.q = {}
        for b in sorted(set(int(b) for b in self.col_bits)):
            qz = Quantizer()
            qz.configure(b, perchannel=True, **cfg)
            self.q[b] = qz

    def ready(self):
        return all(qz.ready() for qz in self.q.values())

    def reset_ties(self, rows):
        self.tie = np.full((rows, len(self.col_bits)), np.inf)

    def find_params(self, x, weight=True):
        for qz in self.q.values():
            qz.find_params(x, weight=weight)

    def quantize_column(self, w, j):
        qz = self.q[int(self.col_bits[j])]
        self.record_tie(w, qz.scale.flatten(), j)
        return quantize(w[:, None], qz.scale, qz.zero, qz.maxq).flatten()

    def record_tie(self, w, scale, j):
        """EXT: distance of w/scale from a rounding boundary (in grid steps), per row,
        so that the tests can tell a legitimate rounding flip from a real difference."""
        t = (w / scale).astype(np.float64)
        self.tie[:, j] = np.abs(t - np.floor(t) - 0.5)

    def permuted(self, perm):
        other = ColumnQuantizers.__new__(ColumnQuantizers)
        other.col_bits = self.col_bits[perm]
        other.cfg = self.cfg
        other.q = self.q
        other.tie = self.tie
        return other

    def copy(self):
        other = ColumnQuantizers(self.col_bits, **self.cfg)
        for b, qz in self.q.items():
            other.q[b].scale = qz.scale.copy()
            other.q[b].zero = qz.zero.copy()
        return other


# ---------------------------------------------------------------- add_batch

class Hessian:
    """SparseGPT.add_batch (nn.Linear), plus WrappedGPT.add_batch's scaler_row."""

    def __init__(self, columns):
        self.H = np.zeros((columns, columns), dtype=f32)
        self.nsamples = 0
        self.scaler_row = np.zeros(columns, dtype=f32)
        self.wnsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp[None]
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.T
        self.H *= f32(self.nsamples / (self.nsamples + tmp))
        self.nsamples += tmp
        inp = f32(math.sqrt(2 / self.nsamples)) * inp.astype(f32)
        self.H += inp @ inp.T

    def add_batch_wanda(self, inp):
        if len(inp.shape) == 2:
            inp = inp[None]
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.T
        self.scaler_row *= f32(self.wnsamples / (self.wnsamples + tmp))
        self.wnsamples += tmp
        inp = inp.astype(f32)
        self.scaler_row += np.linalg.norm(inp, ord=2, axis=1) ** 2 / f32(self.wnsamples)


def upper_cholesky_of_inverse(H):
    # torch.linalg.cholesky -> torch.cholesky_inverse -> torch.linalg.cholesky(upper=True)
    L = np.linalg.cholesky(H)
    Linv = np.linalg.inv(L)
    Hinv = Linv.T @ Linv  # cholesky_inverse(L) = (L L^T)^-1
    return np.linalg.cholesky(Hinv).T.astype(f32)


def topk_smallest(tmp, k):
    # EXT: ties to the lowest index
    return np.argsort(tmp, axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------- sparsegpt.py

def fasterprune(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01, quantizer=None):
    W = W.astype(f32).copy()
    rows, columns = W.shape
    H = H.astype(f32).copy()

    if quantizer is not None:
        quantizer.reset_ties(rows)  # EXT
        if not quantizer.ready():
            quantizer.find_params(W, weight=True)

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    Losses = np.zeros(rows, dtype=f32)

    damp = f32(percdamp) * np.mean(np.diag(H))
    diag = np.arange(columns)
    H[diag, diag] += damp
    Hinv = upper_cholesky_of_inverse(H)

    mask = None
    full_mask = np.zeros_like(W, dtype=bool)  # EXT

    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1

        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Losses1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        if prunen == 0:
            if mask is not None:
                mask1 = mask[:, i1:i2]
            else:
                tmp = W1 ** 2 / (np.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = np.sort(tmp.flatten())[int(tmp.size * sparsity)]
                mask1 = tmp <= thresh
        else:
            mask1 = np.zeros_like(W1) == 1

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]

            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (np.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                np.put_along_axis(mask1, i + topk_smallest(tmp, prunen), True, axis=1)

            q = w.copy()
            q[mask1[:, i]] = 0

            if quantizer is not None:
                q = quantizer.quantize_column(q, i1 + i)

            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2

            err1 = (w - q) / d
            W1[:, i:] -= err1[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err1

        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        Losses += np.sum(Losses1, 1) / 2

        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    tie = quantizer.tie if quantizer is not None else np.full(W.shape, np.inf)
    return W, float(np.sum(Losses)), full_mask, tie, np.arange(columns)


# ---------------------------------------------------------------- gptq.py

def fasterquant(W, H, quantizer, blocksize=128, percdamp=.01, groupsize=-1, actorder=False, static_groups=False):
    W = W.astype(f32).copy()
    rows, columns = W.shape
    H = H.astype(f32).copy()

    quantizer.reset_ties(rows)  # EXT
    if not quantizer.ready():
        quantizer.find_params(W, weight=True)

    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    if static_groups:
        groups = []
        for i in range(0, columns, groupsize):
            qz = quantizer.copy()
            qz.find_params(W[:, i:(i + groupsize)], weight=True)
            groups.append(qz)

    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")  # EXT: stable among equal diagonals
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = np.argsort(perm)
        quantizer = quantizer.permuted(perm)  # EXT: widths follow their columns

    Losses = np.zeros_like(W)
    Q = np.zeros_like(W)

    damp = f32(percdamp) * np.mean(np.diag(H))
    diag = np.arange(columns)
    H[diag, diag] += damp
    Hinv = upper_cholesky_of_inverse(H)

    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1

        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Losses1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]

            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)], weight=True)
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    # EXT: the group's parameters, with the width of the current column
                    g = groups[idx // groupsize]
                    quantizer.q = g.q

            q = quantizer.quantize_column(w, i1 + i)
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2

            err1 = (w - q) / d
            W1[:, i:] -= err1[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err1

        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2

        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    tie = quantizer.tie
    if actorder:
        Q = Q[:, invperm]
        tie = tie[:, invperm]
    else:
        perm = np.arange(columns)

    return Q, float(np.sum(Losses)), np.zeros(Q.shape, dtype=bool), tie, perm


# ---------------------------------------------------------------- wanda lib/prune.py

def nm_mask(W_metric, prune_n, prune_m):
    W_mask = np.zeros_like(W_metric) == 1
    for ii in range(W_metric.shape[1]):
        if ii % prune_m == 0:
            tmp = W_metric[:, ii:(ii + prune_m)].astype(f32)
            np.put_along_axis(W_mask, ii + topk_smallest(tmp, prune_n), True, axis=1)
    return W_mask


def prune_magnitude(W, sparsity_ratio, prune_n=0, prune_m=0):
    W = W.copy()
    W_metric = np.abs(W)
    if prune_n != 0:
        W_mask = nm_mask(W_metric, prune_n, prune_m)
    elif sparsity_ratio == 0:
        W_mask = np.zeros_like(W, dtype=bool)  # EXT
    else:
        thresh = np.sort(W_metric.flatten())[int(W.size * sparsity_ratio)]
        W_mask = W_metric <= thresh
    W[W_mask] = 0
    return W, W_mask


def prune_wanda(W, scaler_row, sparsity_ratio, prune_n=0, prune_m=0):
    W = W.copy()
    W_metric = np.abs(W) * np.sqrt(scaler_row.reshape((1, -1)))
    W_mask = np.zeros_like(W_metric) == 1
    if prune_n != 0:
        W_mask = nm_mask(W_metric, prune_n, prune_m)
    else:
        sort_idx = np.argsort(W_metric, axis=-1, kind="stable")
        indices = sort_idx[:, :int(W_metric.shape[1] * sparsity_ratio)]
        np.put_along_axis(W_mask, indices, True, axis=1)
    W[W_mask] = 0
    return W, W_mask


# ---------------------------------------------------------------- driver

def main(d):
    with open(os.path.join(d, "case.json")) as f:
        case = json.load(f)
    load = lambda name: np.load(os.path.join(d, name))
    W = load("W.npy").astype(f32)
    X = load("X.npy").astype(f32)

    hess = Hessian(W.shape[1])
    start = 0
    for b in case["batches"]:
        hess.add_batch(X[start:start + b])
        hess.add_batch_wanda(X[start:start + b])
        start += b
    np.save(os.path.join(d, "H_ref.npy"), hess.H)
    np.save(os.path.join(d, "scaler_ref.npy"), hess.scaler_row)

    # The algorithms run on the Rust side's H and scaler_row, so that their
    # comparison is not blurred by the accumulation's rounding (compared above).
    H = load("H.npy").astype(f32)
    scaler = load("scaler.npy").astype(f32)

    method = case["method"]
    loss = None
    tie = np.full(W.shape, np.inf)
    perm = np.arange(W.shape[1])
    quantizer = None
    if case.get("bits") is not None:
        col_bits = load("col_bits.npy") if case["bits"] == "per_column" else np.full(W.shape[1], case["bits"])
        quantizer = ColumnQuantizers(
            col_bits, sym=case.get("sym", False), mse=case.get("mse", False),
            norm=2.4, grid=100, maxshrink=.8,
        )
    if method == "sparsegpt":
        Wout, loss, mask, tie, perm = fasterprune(
            W, H, case["sparsity"], prunen=case.get("prunen", 0), prunem=case.get("prunem", 0),
            blocksize=case.get("blocksize", 128), percdamp=case.get("percdamp", .01), quantizer=quantizer,
        )
    elif method == "gptq":
        Wout, loss, mask, tie, perm = fasterquant(
            W, H, quantizer, blocksize=case.get("blocksize", 128), percdamp=case.get("percdamp", .01),
            groupsize=case.get("groupsize", -1), actorder=case.get("actorder", False),
            static_groups=case.get("static_groups", False),
        )
    elif method == "magnitude":
        Wout, mask = prune_magnitude(W, case["sparsity"], case.get("prunen", 0), case.get("prunem", 0))
    elif method == "wanda":
        Wout, mask = prune_wanda(W, scaler, case["sparsity"], case.get("prunen", 0), case.get("prunem", 0))
    else:
        raise SystemExit(f"unknown method {method}")

    # C order: the Rust side reads only C-ordered .npy files
    np.save(os.path.join(d, "W_out.npy"), np.ascontiguousarray(Wout, dtype=f32))
    np.save(os.path.join(d, "mask.npy"), np.ascontiguousarray(mask, dtype=np.uint8))
    np.save(os.path.join(d, "tie.npy"), np.ascontiguousarray(np.minimum(tie, 1e30), dtype=f32))
    np.save(os.path.join(d, "perm.npy"), np.ascontiguousarray(perm, dtype=f32))
    with open(os.path.join(d, "result.json"), "w") as f:
        json.dump({"loss": loss}, f)


if __name__ == "__main__":
    main(sys.argv[1])
