"""The AR-prior task: one phase, next-token cross-entropy over token shards; and its builders."""

from __future__ import annotations

import torch

from latent_diffusion.ar_prior import ARPrior, TokenLayout, build_lm
from train.config import Config
from train.prior_task import PriorTask
from train.tasks import StepContext


class ARPriorTask(PriorTask):
    """Deterministic given the batch (dropout aside), so resume and multi-process runs are exact
    like the other tasks'."""

    def __init__(self, *, prior: ARPrior, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.0) -> None:
        super().__init__(prior=prior, lr=lr, betas=betas, weight_decay=weight_decay)

    def forward(self, models, batch: dict, ctx: StepContext) -> torch.Tensor:
        return models["prior"](batch["x"], batch.get("y")).mean()  # x: (B, *token_shape) long

    def diagnose_nonfinite(self, batch: dict, autocast_dtype) -> str:
        return "the transformer (tokens are integers; try train.mixed_precision=no or a lower train.lr)"


def build_ar_prior(cfg: Config) -> ARPrior:
    """The LM sized for the token shards at data.path (layout, classes and vocabulary from the manifest)."""
    from train.data.tokens import TokenItems

    a = cfg.model.ar
    layout = TokenLayout.from_manifest(TokenItems(cfg.data.path).manifest, class_conditional=a.class_conditional)
    lm = build_lm(arch=a.arch, vocab_size=layout.vocab_size, n_positions=layout.seq_len, width=a.width,
                  layers=a.layers, heads=a.heads, dropout=a.dropout, bos_token_id=layout.bos)
    return ARPrior(lm, layout)


def build_ar_task(cfg: Config, model: ARPrior | None = None) -> ARPriorTask:
    t = cfg.train
    return ARPriorTask(prior=model if model is not None else build_ar_prior(cfg), lr=t.lr, betas=t.betas,
                       weight_decay=t.weight_decay)
