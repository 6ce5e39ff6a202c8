"""Streaming inference equals whole-signal inference: the same codes from any chunking of the
audio, the same samples (to 1e-5) from any chunking of the codes, and a one-frame latency."""

from __future__ import annotations

import pytest
import torch

from audio_codec import StreamingDecoder, StreamingEncoder, build_soundstream

HOP = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared 2-core machine thread hand-offs cost more than they save."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(lstm_layers: int = 1):
    """hop 4, 4 levels of 16 codes; codebooks fitted by one k-means training forward so codes vary."""
    torch.manual_seed(0)
    model = build_soundstream(n_filters=4, ratios=(2, 2), dimension=8, codebook_size=16, num_quantizers=4,
                              sample_rate=16000, lstm_layers=lstm_layers, kmeans_init=True)
    model(torch.randn(2, 1, 256) * 0.3, n_quantizers=4)
    return model.eval()


def random_chunks(total: int, seed: int) -> list[int]:
    """Chunk sizes 0..13 (most not multiples of the hop) adding up to total."""
    g = torch.Generator().manual_seed(seed)
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(int(torch.randint(0, 14, (1,), generator=g)), total - sum(sizes)))
    return sizes


def split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(x, sizes, dim=-1))


@pytest.mark.parametrize("lstm_layers", [0, 1])
@pytest.mark.parametrize("t", [103, 96])  # a partial last frame, and none
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_encoder_gives_the_same_codes(lstm_layers, t, seed):
    model = tiny(lstm_layers)
    x = torch.randn(2, 1, t) * 0.3
    stream = StreamingEncoder(model, n_quantizers=3)
    codes = [stream.push(chunk) for chunk in split(x, random_chunks(t, seed))] + [stream.flush()]
    whole = model.encode(x, n_quantizers=3)
    assert whole.unique().numel() > 4  # not a degenerate code stream
    assert torch.equal(torch.cat(codes, dim=-1), whole)


@pytest.mark.parametrize("lstm_layers", [0, 1])
@pytest.mark.parametrize("sizes", [[1] * 20, [3, 0, 7, 10], [20]])
def test_streaming_decoder_gives_the_same_samples(lstm_layers, sizes):
    model = tiny(lstm_layers)
    codes = torch.randint(0, 16, (2, 3, 20))
    stream = StreamingDecoder(model)
    audio = torch.cat([stream.push(c) for c in split(codes, sizes)], dim=-1)
    assert audio.shape == (2, 1, 20 * HOP)
    assert torch.allclose(audio, model.decode(codes), atol=1e-5, rtol=0)


def test_stream_round_trip_equals_offline_and_restarts_after_flush():
    model = tiny()
    x = torch.randn(1, 1, 50) * 0.3
    enc, dec = StreamingEncoder(model, n_quantizers=2), StreamingDecoder(model)
    for _ in range(2):  # flush resets the encoder; reset() restarts the decoder
        out = [dec.push(enc.push(chunk)) for chunk in split(x, [7, 13, 5, 25])] + [dec.push(enc.flush())]
        offline = model.decode(model.encode(x, n_quantizers=2))
        assert torch.allclose(torch.cat(out, dim=-1), offline, atol=1e-5, rtol=0)
        dec.reset()


def test_latency_is_one_frame():
    model = tiny()
    enc = StreamingEncoder(model)
    assert enc.latency_samples == HOP and enc.latency_seconds == HOP / 16000
    frames = [enc.push(torch.randn(1, 1, 1)).shape[-1] for _ in range(3 * HOP)]
    # Frame n arrives with its last sample, sample (n + 1) * hop - 1, and not before.
    assert [i + 1 for i, f in enumerate(frames) if f] == [HOP, 2 * HOP, 3 * HOP] and max(frames) == 1
    assert enc.flush().shape == (1, 4, 0)  # nothing pending


def test_encoder_needs_eval_mode():
    model = tiny().train()
    with pytest.raises(RuntimeError, match="eval"):
        StreamingEncoder(model).push(torch.randn(1, 1, 8))
    with pytest.raises(ValueError, match="n_quantizers"):
        StreamingEncoder(model, n_quantizers=5)
