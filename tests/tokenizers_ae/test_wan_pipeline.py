"""The depth-first inference pipeline through a Wan encoder/decoder equals diffusers' own causal loop,
however the frames are pushed."""

from __future__ import annotations

import pytest
import torch

from tokenizers_ae.models.video_vae import build_autoencoder_kl_wan
from tokenizers_ae.models.wan_pipeline import Pipeline, causal_cache


def vae():
    torch.manual_seed(0)
    return build_autoencoder_kl_wan(base_dim=8, z_dim=4, dim_mult=(1, 2, 4), num_res_blocks=1,
                                    temporal_downsample=(True, True)).eval()


def diffusers_loop(net, x, first: int, step: int, **first_kw):
    """Wan's own loop: the first `first` frames alone, then `step` frames per call, one cache."""
    cache = causal_cache(net)
    outs = [net(x[:, :, :first], feat_cache=cache, feat_idx=[0], **first_kw)]
    outs += [net(x[:, :, s:s + step], feat_cache=cache, feat_idx=[0]) for s in range(first, x.shape[2], step)]
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("push", [9, 1, 2])
def test_encoder_equals_diffusers_loop(push):
    v = vae()
    x = torch.rand(2, 3, 9, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = diffusers_loop(v.encoder, x, 1, 4)
        pipe = Pipeline.encoder(v.encoder)
        got = torch.cat([y for s in range(0, 9, push) for y in pipe.push(x[:, :, s:s + push])], dim=2)
    assert got.shape == ref.shape == (2, 8, 3, 4, 4)  # mean and logvar of 4 channels, 1 + 8/4 latent frames
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("push", [3, 1])
def test_decoder_equals_diffusers_loop(push):
    v = vae()
    z = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = diffusers_loop(v.decoder, z, 1, 1, first_chunk=True)
        pipe = Pipeline.decoder(v.decoder)
        got = torch.cat([y for s in range(0, 3, push) for y in pipe.push(z[:, :, s:s + push])], dim=2)
    assert got.shape == ref.shape == (2, 3, 9, 16, 16)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
