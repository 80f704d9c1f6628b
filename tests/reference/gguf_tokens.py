"""Token ids of transformers' tokenizer built from a GGUF file's metadata, for
cross-checking `sparselab::data::gguf_tokenizer::from_gguf` (tests/it/gguf_tokenizer.rs).

Usage: gguf_tokens.py GGUF_FILE TEXT_FILE NCHARS [--strings S ...] [--saved DIR]
                      [--digits-split]
  Encodes the first NCHARS characters (code points) of TEXT_FILE, then each S,
  with `AutoTokenizer.from_pretrained(dirname, gguf_file=basename)`; with --saved,
  also the text with the tokenizer of the Hugging Face directory DIR (what
  `TextTokenizer::save_hf` wrote). With --digits-split, also the text and the
  strings with that GGUF tokenizer's pre-tokenizer replaced by SmolLM's own
  (its tokenizer.json: Digits(individual_digits=True), then ByteLevel), which
  transformers' GGUF loader leaves out: that is the model's original tokenizer.
  Always without special tokens (`add_special_tokens=False`), as the Rust side
  encodes.
Prints JSON {"text": [ids], "strings": [[ids], ...], "saved_text": [ids] | null,
             "saved_config": {...} | null, "digits_text": [ids] | null,
             "digits_strings": [[ids], ...] | null}; "saved_config" has the saved
             tokenizer's special tokens and the ids of "Hi" with special tokens.
"""
import argparse
import json
import os
import sys

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("text_file")
ap.add_argument("nchars", type=int)
ap.add_argument("--strings", nargs="*", default=[])
ap.add_argument("--saved")
ap.add_argument("--digits-split", action="store_true")
args = ap.parse_args()

# newline="" keeps "\r" as it is, as Rust's read_to_string does.
with open(args.text_file, encoding="utf-8", newline="") as f:
    text = f.read()[: args.nchars]
path = os.path.abspath(args.gguf)
tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
out = {
    "text": tok(text, add_special_tokens=False).input_ids,
    "strings": [tok(s, add_special_tokens=False).input_ids for s in args.strings],
    "saved_text": None,
    "saved_config": None,
    "digits_text": None,
    "digits_strings": None,
}
if args.saved:
    saved = AutoTokenizer.from_pretrained(args.saved)
    out["saved_text"] = saved(text, add_special_tokens=False).input_ids
    out["saved_config"] = {
        "class": type(saved).__name__,
        "bos_token": saved.bos_token,
        "eos_token": saved.eos_token,
        "unk_token": saved.unk_token,
        "pad_token": saved.pad_token,
        "hi_with_special_tokens": saved("Hi").input_ids,
    }
if args.digits_split:
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    out["digits_text"] = tok(text, add_special_tokens=False).input_ids
    out["digits_strings"] = [tok(s, add_special_tokens=False).input_ids for s in args.strings]
json.dump(out, sys.stdout)
print()
