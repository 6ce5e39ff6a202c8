"""A class-conditional DiT over video latents: diffusers' `WanTransformer3DModel` with the class as
its one cross-attention token.

Wan's transformer cuts a (B, c, t, h, w) latent into spatio-temporal patches (`patch_size`
(p_t, p_h, p_w)), places them with a 3D rotary embedding, modulates every block with the timestep
(adaLN) and cross-attends to `encoder_hidden_states`. A text encoder would fill those; here a learned
table of num_classes + 1 rows does (the last row is the null class that label dropout trains and
classifier-free guidance contrasts against, as the image DiT's), so the denoiser is called like the
image ones: net(x_t, t (B,), class_labels=(B,)) -> .sample. An unconditional prior uses class 0.

`adaln_class=True` conditions the way DiT does (its paper's best variant, adaLN-Zero): the class vector is
added to the timestep embedding, so it modulates every block's norms, and every block's gates and the
output projection start at zero, so the network starts as the identity on the residual stream and
predicts zero. Cross-attention to one token can only add a per-class bias after each block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding
from torch import nn


class _ClassInTimestep(WanTimeTextImageEmbedding):
    """Wan's condition embedder with the (one-token) context added to the timestep embedding before the
    adaLN projection. Same submodules and parameter names as its parent, so weights load either way."""

    def forward(self, timestep, encoder_hidden_states, encoder_hidden_states_image=None, timestep_seq_len=None):
        temb, _, context, image = super().forward(timestep, encoder_hidden_states, encoder_hidden_states_image,
                                                  timestep_seq_len)
        temb = temb + encoder_hidden_states[:, 0].to(temb.dtype)  # (B, width): the class vector
        return temb, self.time_proj(self.act_fn(temb)), context, image


class ClassVideoDiT(ModelMixin, ConfigMixin):
    """(B, c, t, h, w) noisy latents, timesteps (B,), class labels (B,) -> predicted noise (B, c, t, h, w)."""

    @register_to_config
    def __init__(self, *, in_channels: int = 4, patch_size: Sequence[int] = (1, 2, 2), num_layers: int = 4,
                 num_heads: int = 4, head_dim: int = 32, ffn_mult: int = 4, num_classes: int = 0,
                 freq_dim: int = 256, adaln_class: bool = False) -> None:
        super().__init__()
        width = num_heads * head_dim
        self.transformer = WanTransformer3DModel(
            patch_size=tuple(patch_size), num_attention_heads=num_heads, attention_head_dim=head_dim,
            in_channels=in_channels, out_channels=in_channels, text_dim=width, freq_dim=freq_dim,
            ffn_dim=ffn_mult * width, num_layers=num_layers, rope_max_seq_len=1024)
        self.class_table = nn.Embedding(max(num_classes, 1) + 1, width)
        nn.init.normal_(self.class_table.weight, std=0.02)
        if adaln_class:
            self.transformer.condition_embedder.__class__ = _ClassInTimestep
            embedder = self.transformer.condition_embedder
            nn.init.zeros_(embedder.time_proj.weight)  # adaLN-Zero: modulation starts at the table's values
            nn.init.zeros_(embedder.time_proj.bias)
            for block in self.transformer.blocks:  # (1, 6, width): shift, scale, gate for attention, then FFN
                with torch.no_grad():
                    block.scale_shift_table[:, 2].zero_()
                    block.scale_shift_table[:, 5].zero_()
            nn.init.zeros_(self.transformer.proj_out.weight)
            nn.init.zeros_(self.transformer.proj_out.bias)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None,
                return_dict: bool = True):
        if class_labels is None:
            class_labels = torch.zeros(sample.shape[0], dtype=torch.long, device=sample.device)
        context = self.class_table(class_labels.to(sample.device)).unsqueeze(1).to(sample.dtype)  # (B, 1, width)
        out = self.transformer(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
