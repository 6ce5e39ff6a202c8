"""An autoregressive prior over first-stage tokens: a transformers causal LM (GPT-2 or Llama).

Maths only. `TokenLayout` maps a token tensor to one sequence and back:

    [BOS] [class]? t_0 t_1 ... t_{N-1}

- a VQ grid (h, w) in raster order;
- residual levels (Q, h, w) or a codec stream (n_q, T) interleaved position-major (t0q0 t0q1 ...
  t1q0 ...), level q's codes offset by q*K so every level has its own embedding and output rows;
- BOS = Q*K, then one token per class (BOS + 1 + c) when the prior is class-conditional.

`ARPrior.forward` is the per-sample next-token cross-entropy; `sample` runs transformers'
`generate` with its own temperature / top-k / top-p warpers after `LayoutMask`, which allows at
each position only the codes of that position's level, so every sample decodes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
)

from tokenizers_ae.pretrained import LoadError, Pretrained, Saved, check_finite, expect, prepare_dir

PRIOR_VERSION = 1
"""Version of the `prior.json` an exported AR prior carries."""


@dataclass(frozen=True)
class TokenLayout:
    """How one item's tokens become a sequence (see the module docstring)."""

    shape: tuple[int, ...]
    """Token tensor of one item: (h, w) for a VQ grid; (Q, h, w) or (n_q, T) when `levels` > 1."""
    codebook_size: int
    """K: codes per level."""
    levels: int = 1
    """Codebooks interleaved per position (the first axis of `shape` when > 1)."""
    num_classes: int = 0
    """Class tokens after BOS (0: unconditional)."""
    modality: Literal["image", "audio"] = "image"
    """What the first stage decodes the tokens to (images: a VQ tokenizer; audio: a codec)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.levels < 1 or self.codebook_size < 1 or self.num_classes < 0:
            raise ValueError(f"bad layout {self}")
        if self.levels > 1 and self.shape[0] != self.levels:
            raise ValueError(f"shape {self.shape}: the first axis must be the {self.levels} levels")

    @classmethod
    def from_manifest(cls, manifest: dict, *, class_conditional: bool = True) -> TokenLayout:
        """The layout of an `aetk encode` token manifest: codec streams (n_q, T) carry
        `n_quantizers`; image grids are (h, w), or (Q, h, w) for residual VQ."""
        if manifest.get("format") != "aetk-tokens":
            raise ValueError(f"an AR prior trains on token shards (format aetk-tokens), not {manifest.get('format')}")
        shape = tuple(manifest["token_shape"])
        audio = "n_quantizers" in manifest
        levels = int(manifest["n_quantizers"]) if audio else (shape[0] if len(shape) == 3 else 1)
        classes = int(manifest.get("num_classes") or 0) if class_conditional else 0
        return cls(shape=shape, codebook_size=int(manifest["codebook_size"]), levels=levels, num_classes=classes,
                   modality="audio" if audio else "image")

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> TokenLayout:
        return cls(**{**d, "shape": tuple(d["shape"])})

    # --- vocabulary -----------------------------------------------------------------------------

    @property
    def bos(self) -> int:
        return self.levels * self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.bos + 1 + self.num_classes

    def class_token(self, labels: torch.Tensor) -> torch.Tensor:
        return self.bos + 1 + labels

    @property
    def n_tokens(self) -> int:
        return math.prod(self.shape)

    @property
    def prefix_len(self) -> int:
        return 1 + (self.num_classes > 0)

    @property
    def seq_len(self) -> int:
        return self.prefix_len + self.n_tokens

    def allowed(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (P,) token indices 0..N-1 -> (P, vocab_size) bool: the codes of each one's level."""
        lo = (positions % self.levels) * self.codebook_size  # (P,)
        v = torch.arange(self.vocab_size, device=positions.device)  # (V,)
        return (v >= lo[:, None]) & (v < lo[:, None] + self.codebook_size)  # (P, V)

    # --- tokens <-> sequences -------------------------------------------------------------------

    def flatten(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, *shape) codes in [0, K) -> (B, N) vocabulary ids (levels interleaved and offset)."""
        if tuple(tokens.shape[1:]) != self.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match the layout's shape {self.shape}")
        if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) < self.codebook_size):
            # e.g. -1 marks residual levels an encode left unused: a prior needs every level
            raise ValueError(f"token values must lie in [0, {self.codebook_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        b = tokens.shape[0]
        if self.levels == 1:
            return tokens.reshape(b, -1).long()  # raster order
        t = tokens.reshape(b, self.levels, -1).transpose(1, 2).long()  # (B, positions, Q)
        offsets = torch.arange(self.levels, device=tokens.device) * self.codebook_size  # (Q,)
        return (t + offsets).reshape(b, -1)  # (B, positions * Q), position-major

    def unflatten(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, N) vocabulary ids -> (B, *shape) codes; inverse of `flatten`."""
        b = ids.shape[0]
        if self.levels == 1:
            return ids.reshape(b, *self.shape)
        offsets = torch.arange(self.levels, device=ids.device) * self.codebook_size  # (Q,)
        t = ids.reshape(b, -1, self.levels) - offsets  # (B, positions, Q)
        return t.transpose(1, 2).reshape(b, *self.shape)

    def prefix(self, n: int, labels: torch.Tensor | None = None, device=None) -> torch.Tensor:
        """(n, prefix_len): BOS, then the class token when the layout has classes."""
        bos = torch.full((n, 1), self.bos, dtype=torch.long, device=device)
        if self.num_classes == 0:
            return bos
        if labels is None:
            raise ValueError(f"this prior is class-conditional ({self.num_classes} classes): labels are required")
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1).expand(n)
        if not (0 <= int(labels.min()) and int(labels.max()) < self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels.tolist()}")
        return torch.cat([bos, self.class_token(labels)[:, None]], dim=1)

    def to_sequence(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, *shape) codes -> (B, seq_len) ids."""
        return torch.cat([self.prefix(tokens.shape[0], labels, tokens.device), self.flatten(tokens)], dim=1)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, seq_len) ids -> (B, *shape) codes (the prefix dropped)."""
        return self.unflatten(seq[:, self.prefix_len:])


def build_lm(*, arch: Literal["gpt2", "llama"], vocab_size: int, n_positions: int, width: int = 256,
             layers: int = 6, heads: int = 8, dropout: float = 0.0, bos_token_id: int | None = None) -> PreTrainedModel:
    """A small causal LM from a transformers config (random weights; `save_pretrained` / `AutoModelForCausalLM`
    load it). Input and output embeddings are untied: checkpoints are safetensors, which refuse
    tensors that share memory, and the vocabularies here are small."""
    common = dict(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=None, pad_token_id=None,
                  tie_word_embeddings=False)  # fixed-length sequences: no end token, no padding
    if arch == "gpt2":
        cfg = GPT2Config(n_positions=n_positions, n_embd=width, n_layer=layers, n_head=heads, resid_pdrop=dropout,
                         embd_pdrop=dropout, attn_pdrop=dropout, **common)
        return GPT2LMHeadModel(cfg)
    if arch == "llama":
        # SwiGLU at Llama's 8/3 ratio (rounded to 16) has the parameter count of a 4x GELU MLP.
        cfg = LlamaConfig(hidden_size=width, intermediate_size=16 * math.ceil(8 * width / 3 / 16),
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=n_positions, attention_dropout=dropout, **common)
        return LlamaForCausalLM(cfg)
    raise ValueError(f"arch must be gpt2 or llama, got {arch!r}")


class ARPrior(Pretrained, nn.Module):
    """Next-token cross-entropy of (B, *shape) token tensors under a causal LM.

    What sampling needs besides the weights travels with the model: `sampling` (default top_k,
    top_p, temperature), `first_stage` (the VQ tokenizer or audio codec that decodes the tokens)
    and `class_names`. Saved as `ar/` (transformers `save_pretrained`) + `prior.json`:
    {"kind": "ar_prior", "version", "layout", "token_shape", "first_stage", "sampling", "class_names"?}.
    """

    saved_name, saved_what = "ARPrior", "an AR prior"

    def __init__(self, lm: PreTrainedModel, layout: TokenLayout, *, sampling: dict | None = None,
                 first_stage: str | None = None, class_names: list[str] | None = None) -> None:
        super().__init__()
        if lm.config.vocab_size != layout.vocab_size:
            raise ValueError(f"LM vocabulary {lm.config.vocab_size} != layout's {layout.vocab_size}")
        self.lm, self.layout = lm, layout
        self.sampling = dict(sampling or {"top_k": 0, "top_p": 1.0, "temperature": 1.0})
        self.first_stage, self.class_names = first_stage, list(class_names or [])
        # One additive row per level (0 on its codes, -inf elsewhere): positions cycle through the
        # levels, so (levels, V) covers any length without an (N, V) table.
        levels = torch.arange(layout.levels)
        self.register_buffer("level_mask", torch.zeros(layout.levels, layout.vocab_size).masked_fill_(
            ~layout.allowed(levels), float("-inf")), persistent=False)

    # --- saving and loading ---------------------------------------------------------------------

    def pretrained_config(self) -> dict:
        return {"lm": self.lm.config.to_dict(), "layout": self.layout.to_dict(), "sampling": self.sampling,
                "first_stage": self.first_stage, "class_names": self.class_names}

    @classmethod
    def from_config(cls, config: dict) -> ARPrior:
        lm_config = dict(config["lm"])
        lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(lm_config.pop("model_type"), **lm_config))
        return cls(lm, TokenLayout.from_dict(config["layout"]), sampling=config["sampling"],
                   first_stage=config["first_stage"], class_names=config["class_names"])

    @classmethod
    def from_saved(cls, saved: Saved) -> ARPrior:
        expect(saved, cls.saved_name, cls.saved_what)
        if saved.source != "prior":
            return super().from_saved(saved)
        meta = json.loads((saved.path / "prior.json").read_text())
        if meta.get("version") != PRIOR_VERSION:
            raise LoadError(f"{saved.path}/prior.json: ar_prior version {meta.get('version')} is not "
                            f"{PRIOR_VERSION}")
        lm = AutoModelForCausalLM.from_pretrained(saved.path / "ar")
        return cls(lm, TokenLayout.from_dict(meta["layout"]), sampling=meta["sampling"],
                   first_stage=meta.get("first_stage"), class_names=meta.get("class_names")).eval()

    def save_pretrained(self, out: str | Path) -> Path:
        """`out/ar/` (transformers `save_pretrained`, safetensors) and `out/prior.json`."""
        check_finite(self.state_dict(), f"AR prior for {out}")
        out = prepare_dir(out)
        self.lm.save_pretrained(out / "ar", safe_serialization=True)
        meta = {"kind": "ar_prior", "version": PRIOR_VERSION, "layout": self.layout.to_dict(),
                "token_shape": list(self.layout.shape), "first_stage": self.first_stage, "sampling": self.sampling}
        if self.class_names:
            meta["class_names"] = self.class_names
        (out / "prior.json").write_text(json.dumps(meta, indent=1))
        return out

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, N, V) logits of token positions 0..N-1 -> float32 with every other level's codes (and
        BOS, class tokens) at -inf. Training masks as sampling does (`LayoutMask`), so the model
        spends nothing on tokens that can never appear at a position."""
        b, n, v = logits.shape
        lv = self.layout.levels
        return (logits.float().reshape(b, n // lv, lv, v) + self.level_mask).reshape(b, n, v)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, *shape), labels (B,) -> per-sample mean negative log-likelihood (B,), nats/token."""
        seq = self.layout.to_sequence(tokens, labels)  # (B, L)
        p = self.layout.prefix_len
        logits = self.lm(input_ids=seq[:, :-1]).logits[:, p - 1:]  # (B, N, V): position j predicts token j
        nll = F.cross_entropy(self.mask_logits(logits).transpose(1, 2), seq[:, p:], reduction="none")  # (B, N)
        return nll.mean(dim=1)


class LayoutMask(LogitsProcessor):
    """Only the codes of the next position's level (never BOS or a class token): any sample decodes."""

    def __init__(self, layout: TokenLayout) -> None:
        self.layout = layout

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        j = input_ids.shape[1] - self.layout.prefix_len  # index of the token being chosen
        allowed = self.layout.allowed(torch.tensor([j], device=scores.device))  # (1, V)
        return scores.masked_fill(~allowed, float("-inf"))


@torch.no_grad()
def sample(prior: ARPrior, *, n: int, seed: int = 0, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
           labels: torch.Tensor | int | None = None) -> torch.Tensor:
    """n token tensors (n, *shape), deterministic for a seed (the global RNG is left as it was).
    top_k = 0 and top_p = 1 switch those filters off; `labels` (n,) or one int for all."""
    if temperature <= 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    layout, lm = prior.layout, prior.lm
    prefix = layout.prefix(n, labels, lm.device)  # (n, prefix_len)
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # generate draws from the global RNG
        seq = lm.generate(input_ids=prefix, attention_mask=torch.ones_like(prefix), do_sample=True,
                          temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=layout.n_tokens,
                          min_new_tokens=layout.n_tokens, logits_processor=LogitsProcessorList([LayoutMask(layout)]),
                          pad_token_id=layout.bos, eos_token_id=None)  # (n, seq_len)
    return layout.from_sequence(seq)
