"""Reference zero-shot task scoring with transformers, written from
lm-eval-harness's task definitions (v0.4: the lambada_openai, piqa, arc_easy,
hellaswag and winogrande YAML/utils and HFLM's loglikelihood), for
cross-checking `eval_tasks`.

Usage: tasks_ref.py MODEL LAYOUT FILE
  LAYOUT: lambada, piqa, arc, hellaswag or winogrande; FILE: the JSONL file.
Prints JSON {"lls": [[ll per choice] per doc], "acc", "acc_norm"} (acc_norm
null where lm-eval has none; for lambada acc is greedy accuracy).
"""
import json
import re
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, layout, path = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
max_len = model.config.max_position_embeddings


def hs_pre(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def requests(doc):
    """(list of (context, continuation), gold, choices for acc_norm or None)."""
    if layout == "lambada":
        ctx, word = doc["text"].rsplit(" ", 1)
        return [(ctx, " " + word)], 0, None
    if layout == "piqa":
        ctx = "Question: " + doc["goal"] + "\nAnswer:"
        ch = [doc["sol1"], doc["sol2"]]
        return [(ctx, " " + c) for c in ch], int(doc["label"]), ch
    if layout == "arc":
        ctx = "Question: " + doc["question"] + "\nAnswer:"
        ch = doc["choices"]["text"]
        return [(ctx, " " + c) for c in ch], doc["choices"]["label"].index(doc["answerKey"]), ch
    if layout == "hellaswag":
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        q = hs_pre(doc["activity_label"] + ": " + ctx)
        ch = [hs_pre(e) for e in doc["endings"]]
        return [(q, " " + c) for c in ch], int(doc["label"]), ch
    if layout == "winogrande":
        idx = doc["sentence"].index("_")
        cont = " " + doc["sentence"][idx + 1 :].strip()
        ctxs = [doc["sentence"][:idx] + o for o in (doc["option1"], doc["option2"])]
        return [(c, cont) for c in ctxs], {"1": 0, "2": 1}[doc["answer"]], None
    raise SystemExit("unknown layout " + layout)


def encode_pair(context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx) :]


def loglikelihood(context, continuation):
    ctx, cont = encode_pair(context, continuation)
    inp = torch.tensor([(ctx + cont)[-(max_len + 1) :][:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(inp).logits[0].double(), dim=-1)
    logp = logp[-len(cont) :]
    target = torch.tensor(cont).unsqueeze(1)
    greedy = bool((logp.argmax(-1) == target.squeeze(1)).all())
    return logp.gather(1, target).sum().item(), greedy


lls, acc, acc_norm = [], [], []
for line in open(path, encoding="utf-8"):
    if not line.strip():
        continue
    reqs, gold, choices = requests(json.loads(line))
    scored = [loglikelihood(c, k) for c, k in reqs]
    ll = [s[0] for s in scored]
    lls.append(ll)
    if layout == "lambada":
        acc.append(float(scored[0][1]))
        continue
    acc.append(float(max(range(len(ll)), key=lambda i: (ll[i], -i)) == gold))
    if choices is not None:
        norm = [l / len(c) for l, c in zip(ll, choices)]
        acc_norm.append(float(max(range(len(norm)), key=lambda i: (norm[i], -i)) == gold))
print(
    json.dumps(
        {
            "lls": lls,
            "acc": sum(acc) / len(acc),
            "acc_norm": sum(acc_norm) / len(acc_norm) if acc_norm else None,
        }
    )
)
