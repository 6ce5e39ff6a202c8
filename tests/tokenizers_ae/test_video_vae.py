"""The video VAE (diffusers AutoencoderKLWan): causal chunked encoding equals whole-clip encoding,
streaming, the diffusers round trip, FSQ tokens, and clear errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

import aetk
from tokenizers_ae.models.video_vae import (
    NOT_TILEABLE,
    VideoDecoderStream,
    VideoEncoderStream,
    VideoVAE,
    build_autoencoder_kl_wan,
)
from tokenizers_ae.quantizers import FSQ

# The shipped recipe's compression (4x in time, 8x in space) at a tiny width.
ARCH = dict(base_dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=1, temporal_downsample=(False, True, True))


def tiny(seed: int = 0, **kw) -> VideoVAE:
    torch.manual_seed(seed)
    return VideoVAE(build_autoencoder_kl_wan(**{**ARCH, **kw})).eval()


def clip(frames: int = 17, side: int = 32, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, side, side, generator=g) * 2 - 1


def test_geometry_and_first_frame_alone():
    m = tiny()
    assert (m.temporal_factor, m.spatial_factor, m.latent_channels) == (4, 8, 4)
    with torch.no_grad():
        z = m.encode(clip(17))
        assert z.shape == (2, 4, 5, 4, 4)
        # An image is a one-frame video: one latent frame, and it is the clip's first latent frame.
        image = m.encode(clip(17)[:, :, :1])
    assert image.shape == (2, 4, 1, 4, 4)
    torch.testing.assert_close(image[:, :, 0], z[:, :, 0], rtol=0, atol=1e-6)


def test_causal_a_later_frame_changes_no_earlier_latent():
    m = tiny()
    x = clip(17)
    y = x.clone()
    y[:, :, 9:] = -y[:, :, 9:]  # frames 9.. belong to latent frames 3 and 4 (groups 1-4, 5-8, 9-12, 13-16)
    with torch.no_grad():
        a, b = m.encode(x), m.encode(y)
    torch.testing.assert_close(a[:, :, :3], b[:, :, :3], rtol=0, atol=1e-6)
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-3


@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_encode_and_decode_equal_whole_clip(chunk):
    m = tiny()
    x = clip(17)
    with torch.no_grad():
        whole, logvar = m.encode_moments(x)
        parts, logvar_parts = m.encode_moments(x, chunk=chunk)
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)
        torch.testing.assert_close(logvar_parts, logvar, rtol=0, atol=1e-5)
        dec = m.decode(whole)
        torch.testing.assert_close(m.decode(whole, chunk=chunk // 4), dec, rtol=0, atol=1e-5)
    assert dec.shape == x.shape


def test_streams_in_uneven_pushes_equal_whole_clip():
    m = tiny()
    x = clip(21)
    with torch.no_grad():
        whole = m.encode(x)
        enc = VideoEncoderStream(m)
        pieces = [enc.push(x[:, :, s:s + 3]) for s in range(0, 21, 3)]  # 3 frames at a time: groups straddle pushes
        enc.flush()
        torch.testing.assert_close(torch.cat(pieces, dim=2), whole, rtol=0, atol=1e-5)
        dec = VideoDecoderStream(m)
        frames = torch.cat([dec.push(whole[:, :, s:s + 2]) for s in range(0, whole.shape[2], 2)], dim=2)
        torch.testing.assert_close(frames, m.decode(whole), rtol=0, atol=1e-5)
    enc = VideoEncoderStream(m)
    with torch.no_grad():
        enc.push(x[:, :, :6])
    with pytest.raises(ValueError, match="1 frame\\(s\\) left over"):
        enc.flush()


def test_equals_diffusers_own_encode_and_decode():
    m = tiny()
    x = clip(9)
    with torch.no_grad():
        ours = m.encode(x)
        theirs = m.vae.encode(x).latent_dist.mode()  # Wan's own loop: frame 0, then groups of 4
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        torch.testing.assert_close(m.reconstruct(x), m.vae.decode(theirs).sample, rtol=0, atol=1e-5)


def test_diffusers_export_loads_and_reconstructs_within_1e5(tmp_path):
    m = tiny()
    m.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    out = m.save_pretrained(tmp_path / "wan")
    vae = AutoencoderKLWan.from_pretrained(out).eval()
    assert list(vae.config.latents_std) == [1.5, 0.5, 2.0, 1.0]
    x = clip(9)
    with torch.no_grad():
        theirs = vae.decode(vae.encode(x).latent_dist.mode()).sample
        loaded = aetk.load(out)
        assert isinstance(loaded, VideoVAE)
        torch.testing.assert_close(loaded.reconstruct(x), theirs, rtol=0, atol=1e-5)
        torch.testing.assert_close(m.reconstruct(x), theirs, rtol=0, atol=1e-5)
        z = loaded.encode(x)
        torch.testing.assert_close(loaded.denormalize(loaded.normalize(z)), z, rtol=0, atol=1e-5)


def test_fsq_tokens_round_trip_natively(tmp_path):
    torch.manual_seed(0)
    m = VideoVAE(build_autoencoder_kl_wan(**ARCH), quantizer=FSQ(levels=[5, 5, 5], dim=4)).eval()
    x = clip(9)
    with torch.no_grad():
        tokens = m.tokens(x)
        assert tokens.shape == (2, 3, 4, 4) and int(tokens.max()) < 125
        torch.testing.assert_close(m.decode_indices(tokens), m.reconstruct(x), rtol=0, atol=1e-5)
        out = m.save_pretrained(tmp_path / "fsq")
        assert (out / "aetk_model.json").is_file()
        loaded = aetk.load(out)
        torch.testing.assert_close(loaded.tokens(x), tokens, rtol=0, atol=0)


def test_training_forward_gives_kl_and_gradients():
    m = tiny().train()
    x = clip(9)
    out = m(x, noise=lambda shape: torch.zeros(shape))
    assert out.recon.shape == x.shape and set(out.reg) == {"kl"}
    (out.recon.pow(2).mean() + out.reg["kl"]).backward()
    assert m.last_layer.grad is not None and m.last_layer.grad.abs().sum() > 0
    assert m.vae.encoder.conv_in.weight.grad.abs().sum() > 0  # through the causal cache too


def test_clear_errors():
    m = tiny()
    with pytest.raises(ValueError, match="1 \\+ k\\*4 frames"):
        m.encode(clip(8))
    with pytest.raises(ValueError, match="multiples of 8"):
        m.encode(clip(5, side=20))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        m.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="chunk must be a positive multiple of 4"):
        m.encode(clip(9), chunk=3)
    with pytest.raises(ValueError, match="spatial tiling cannot be exact"):
        m.encode(clip(9), tile=16)
    assert "chunks of frames" in NOT_TILEABLE
    with pytest.raises(ValueError, match="continuous"):
        m.tokens(clip(9))


def test_streaming_encode_under_bf16_autocast_gives_fp32_moments_near_fp32():
    """The bounded-memory inference path writes each chunk's moments into preallocated fp32 tensors:
    under autocast (a bf16 training run's eval, `aetk encode --precision bf16`) they arrive in bf16."""
    m, x = tiny(), clip(frames=9, batch=1)
    with torch.no_grad():
        ref_mean, ref_logvar = m.encode_moments(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mean, logvar = m.encode_moments(x)
    assert mean.dtype == logvar.dtype == torch.float32
    assert torch.isfinite(mean).all() and torch.isfinite(logvar).all()
    assert (mean - ref_mean).norm() / ref_mean.norm() < 0.05


# Wan 2.2's residual blocks (`model.residual`) at a tiny width: 4x in time and space, as configs/video-tiny.yaml;
# the last level keeps its width (AvgDown3D's shortcut needs in * factor divisible by out).
RESIDUAL = dict(base_dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True),
                residual=True)


def test_residual_blocks_chunk_stream_and_export_exactly(tmp_path):
    m = tiny(**RESIDUAL)
    assert m.vae.config.is_residual and (m.temporal_factor, m.spatial_factor) == (4, 4)
    shortcuts = [b.avg_shortcut for b in m.vae.encoder.down_blocks]
    assert shortcuts and all(s is not None for s in shortcuts)  # the parameter-free shortcuts are there
    x = clip(17)
    with torch.no_grad():
        whole, _ = m.encode_moments(x)
        assert whole.shape == (2, 4, 5, 8, 8)
        torch.testing.assert_close(m.encode_moments(x, chunk=4)[0], whole, rtol=0, atol=1e-5)
        dec = m.decode(whole)
        torch.testing.assert_close(m.decode(whole, chunk=1), dec, rtol=0, atol=1e-5)
        enc = VideoEncoderStream(m)
        pieces = [enc.push(x[:, :, s:s + 3]) for s in range(0, 17, 3)]
        enc.flush()
        torch.testing.assert_close(torch.cat(pieces, dim=2), whole, rtol=0, atol=1e-5)
        stream = VideoDecoderStream(m)
        frames = torch.cat([stream.push(whole[:, :, s:s + 2]) for s in range(0, 5, 2)], dim=2)
        torch.testing.assert_close(frames, dec, rtol=0, atol=1e-5)
        # diffusers' own loop, and the export it loads
        torch.testing.assert_close(m.vae.encode(x).latent_dist.mode(), whole, rtol=0, atol=1e-5)
        vae = AutoencoderKLWan.from_pretrained(m.save_pretrained(tmp_path / "wan22")).eval()
        assert vae.config.is_residual
        torch.testing.assert_close(vae.decode(vae.encode(x).latent_dist.mode()).sample, m.reconstruct(x),
                                   rtol=0, atol=1e-5)
