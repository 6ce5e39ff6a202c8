"""`builtin:lm-activations`: residual-stream activations of a small causal language model on text
that ships with Python (the docstrings of a fixed list of stdlib modules), for sparse autoencoders.

The model is a local transformers directory (`model.classic.lm`) read with its own tokenizer, or,
by default, a tiny GPT-2 with random weights (seed 0) over bytes: token id = byte value, so no
tokenizer files are needed and nothing is downloaded. Items are {"x": (d_model,) float32,
"index": int, "bad": []}; `tokens` and `context(i)` say which token each activation came from, for
the feature reports of `eval/classic.py`. The first 90% of tokens are `train`, the rest `val`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io

import torch

STDLIB_MODULES = ("this", "collections", "functools", "itertools", "json", "re", "string", "textwrap", "pathlib",
                  "os", "inspect", "dataclasses", "typing", "argparse", "logging", "subprocess", "shutil", "heapq",
                  "bisect", "statistics", "fractions", "decimal", "datetime", "calendar", "csv", "difflib")
CONTEXT = 64
"""Tokens per forward pass (the random GPT-2's positions)."""
RANDOM_GPT2 = dict(vocab_size=256, n_positions=CONTEXT, n_embd=64, n_layer=2, n_head=4, bos_token_id=None,
                   eos_token_id=None)
"""The default model: a 2-layer, 64-wide GPT-2 with random weights over bytes."""
VAL_FRACTION = 0.1


@functools.cache
def stdlib_text() -> str:
    """The Zen of Python and the docstrings of STDLIB_MODULES and their public members, in a fixed order."""
    parts = []
    for name in STDLIB_MODULES:
        with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
            mod = importlib.import_module(name)
        if name == "this":  # the Zen is stored rot13-encoded
            parts.append("".join(mod.d.get(c, c) for c in mod.s))
            continue
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(mod, attr, None))
            if doc and (not parts or doc != parts[-1]):
                parts.append(doc)
    return "\n\n".join(parts)


def _load_lm(lm: str | None):
    """(model in eval mode, encode text -> ids, decode one id -> str)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel  # transformers: only the SAE data loads a language model

    if lm is None:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(**RANDOM_GPT2))
        return (model.eval(), lambda text: list(text.encode("utf-8")),
                lambda i: bytes([i]).decode("utf-8", errors="replace"))
    tok = AutoTokenizer.from_pretrained(lm, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(lm, local_files_only=True)
    return model.eval(), lambda text: tok(text)["input_ids"], lambda i: tok.decode([i])


def lm_hidden_size(lm: str | None) -> int:
    """d_model of the LM without running it."""
    if lm is None:
        return RANDOM_GPT2["n_embd"]
    from transformers import AutoConfig  # transformers: only the SAE data loads a language model

    cfg = AutoConfig.from_pretrained(lm, local_files_only=True)
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


@functools.cache
def collect_activations(lm: str | None, layer: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(activations (N, d), token ids (N,), the vocabulary strings by id used in the text): the residual stream
    after `layer` blocks, over windows of CONTEXT tokens of `stdlib_text()`, N = n_tokens rounded down
    to whole windows."""
    model, encode, decode = _load_lm(lm)
    ids = torch.tensor(encode(stdlib_text()), dtype=torch.long)
    n = min(n_tokens, len(ids)) // CONTEXT * CONTEXT
    windows = ids[:n].view(-1, CONTEXT)  # (W, T)
    acts = []
    with torch.no_grad():
        for s in range(0, len(windows), 64):
            out = model(windows[s:s + 64], output_hidden_states=True)
            if layer >= len(out.hidden_states):
                raise ValueError(f"model.classic.lm_layer={layer}: the model has {len(out.hidden_states) - 1} blocks")
            acts.append(out.hidden_states[layer].flatten(0, 1).float())  # (w*T, d)
    used = sorted(set(ids[:n].tolist()))
    vocab = [""] * (max(used) + 1)
    for i in used:
        vocab[i] = decode(i)
    return torch.cat(acts), ids[:n], tuple(vocab)


class LMActivations(torch.utils.data.Dataset):
    """One split of `collect_activations` as a dataset of vectors."""

    def __init__(self, *, lm: str | None = None, layer: int = 1, n_tokens: int = 16384, split: str = "train") -> None:
        self.path = "builtin:lm-activations"
        acts, ids, self.vocab = collect_activations(lm, layer, n_tokens)
        cut = round(len(ids) * (1 - VAL_FRACTION)) // CONTEXT * CONTEXT
        part = slice(cut, None) if split == "val" else slice(0, cut)
        self.acts, self.tokens = acts[part], ids[part]  # (N, d), (N,)
        self.split = split

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.acts[int(i)], "index": int(i), "bad": []}

    def context(self, i: int, before: int = 12, after: int = 2) -> str:
        """The text around token i, the token itself in [brackets] (within its window)."""
        w0 = i // CONTEXT * CONTEXT
        text = lambda a, b: "".join(self.vocab[t] for t in self.tokens[max(a, w0):min(b, w0 + CONTEXT)].tolist())
        return (text(i - before, i) + "[" + self.vocab[int(self.tokens[i])] + "]" + text(i + 1, i + 1 + after)).replace("\n", "⏎")

    def set_epoch(self, epoch: int) -> None:
        """Nothing depends on the epoch."""

    def describe(self, i: int) -> str:
        return f"lm-activations:{self.split}[{i}]"

    def why_unreadable(self, i: int) -> str:
        return ""
