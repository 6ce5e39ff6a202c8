"""Exact tiled encode/decode: equal to untiled within float rounding, memory falling with the tile."""

import pytest
import torch

from eval.bench.tiling import measure
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl
from tokenizers_ae.tiling import decode_tiled, encode_tiled

SMALL = dict(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_autoencoder_kl(**SMALL, sample_size=512).eval()


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 512, 512, generator=g) * 2 - 1


def test_tiled_encode_and_decode_equal_untiled_on_512px(vae, image):
    with torch.no_grad():
        ref_h = vae.encoder(image)
        z = vae.quant_conv(ref_h).chunk(2, dim=1)[0]
        ref_x = vae.decoder(vae.post_quant_conv(z))
        for tile in (64, 96, 256):  # 96 does not divide the map: ragged edge tiles
            assert (encode_tiled(vae.encoder, image, tile) - ref_h).abs().max() <= 1e-4
            assert (decode_tiled(vae.decoder, vae.post_quant_conv(z), tile) - ref_x).abs().max() <= 1e-4
        # diffusers' enable_tiling() blends tiles normalised separately: visibly different.
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = 256, 64
        try:
            theirs = vae.decode(z).sample
        finally:
            vae.disable_tiling()
    theirs_err = float((theirs - ref_x).abs().max())
    ours_err = float((decode_tiled(vae.decoder, vae.post_quant_conv(z), 256) - ref_x).abs().max())
    assert theirs_err > 1e-2 > 100 * ours_err


def test_klvae_encode_decode_accept_a_tile(vae, image):
    model = KLVAE(vae).eval()
    with torch.no_grad():
        mean, logvar = model.encode_moments(image[:, :, :128, :128])
        mean_t, logvar_t = model.encode_moments(image[:, :, :128, :128], tile=32)
        assert torch.allclose(mean, mean_t, atol=1e-4) and torch.allclose(logvar, logvar_t, atol=1e-4)
        assert torch.allclose(model.decode(mean), model.decode(mean, tile=32), atol=1e-4)


def test_peak_memory_falls_as_the_tile_shrinks():
    peaks = {}
    for tile in (None, 128, 64):  # 256x256: each measurement is a fresh process; the bench does 512 and 1024
        method = "untiled" if tile is None else "aetk"
        _, _, peaks[tile] = measure(dict(SMALL), 256, "decode", method, tile or 128, threads=1)
    assert peaks[64] < peaks[128] < peaks[None], peaks


def test_bad_tile_and_unsupported_blocks_are_clear_errors(vae, image):
    with pytest.raises(ValueError, match="tile must be an integer >= 8"):
        encode_tiled(vae.encoder, image, 4)
    from diffusers import AutoencoderKL

    attn = AutoencoderKL(down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 32),
                         norm_num_groups=16, layers_per_block=1).eval()
    with pytest.raises(NotImplementedError, match="tiling supports"):
        encode_tiled(attn.encoder, image[:, :, :64, :64], 32)
