"""The .aetk compressed-audio container: round trips and a clear ContainerError for every corruption."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import zlib

import pytest
import torch

from audio_codec.container import (
    FORMAT_VERSION,
    MAGIC,
    AudioCodesHeader,
    ContainerError,
    achieved_kbps,
    decode_codes,
    encode_codes,
    read_codes,
    state_dict_hash,
    write_codes,
)

FIELDS = dict(model_hash="0123456789abcdef", sample_rate=24000, hop_length=320, codebook_bits=10)


def random_codes(n_q: int, frames: int, bits: int, *, channels: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n_q, frames) if channels is None else (channels, n_q, frames)
    return torch.randint(0, 2 ** bits, shape, generator=g)


def sample_file(frames: int = 7, n_q: int = 3, bits: int = 10) -> tuple[bytes, torch.Tensor]:
    codes = random_codes(n_q, frames, bits)
    data, _ = encode_codes(codes, **{**FIELDS, "codebook_bits": bits}, num_samples=frames * 320 - 100)
    return data, codes


def rebuild(header: dict, payload: bytes, *, version: int = FORMAT_VERSION, magic: bytes = MAGIC) -> bytes:
    """A file with a hand-made header and a valid CRC, to reach the checks after the CRC."""
    head = json.dumps(header).encode()
    body = struct.pack("<4sHI", magic, version, len(head)) + head + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("bits", list(range(1, 17)))
def test_round_trip_every_codebook_width(bits, tmp_path):
    codes = random_codes(4, 13, bits, seed=bits)
    codes[0, 0], codes[-1, -1] = 0, 2 ** bits - 1  # both ends of the range
    path = tmp_path / "x.aetk"
    header = write_codes(path, codes, **{**FIELDS, "codebook_bits": bits}, num_samples=13 * 320 - 5)
    back, read_header = read_codes(path)
    assert back.dtype == torch.int64 and back.shape == (1, 4, 13)
    assert torch.equal(back[0], codes)
    assert read_header == header
    assert header.n_quantizers == 4 and header.num_frames == 13 and header.channels == 1
    assert header.kbps == pytest.approx(4 * bits * 24000 / 320 / 1000)
    # The payload is exactly bit-packed: no byte more than ceil(bits * count / 8).
    head_len = struct.unpack_from("<I", path.read_bytes(), 6)[0]
    assert path.stat().st_size == 10 + head_len + -(-4 * 13 * bits // 8) + 4


def test_round_trip_channels_file_objects_and_partial_codebook():
    codes = random_codes(2, 9, 10, channels=2) % 1000  # e.g. FSQ with 1000 levels in 10 bits
    buf = io.BytesIO()
    header = write_codes(buf, codes, **FIELDS, num_samples=9 * 320, codebook_size=1000)
    buf.seek(0)
    back, read_header = read_codes(buf)
    assert torch.equal(back, codes) and read_header.channels == 2 and read_header.codebook_size == 1000
    assert read_header == header


def test_frame_major_layout():
    """Frame t's codes (all channels, all quantizers) come before frame t + 1's: a stream cuts at frames."""
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # (1 channel, 2 quantizers, 3 frames)
    data, _ = encode_codes(codes, **{**FIELDS, "codebook_bits": 8}, num_samples=3 * 320)
    head_len = struct.unpack_from("<I", data, 6)[0]
    assert data[10 + head_len:-4] == bytes([1, 4, 2, 5, 3, 6])


def test_empty_codes_round_trip():
    data, _ = encode_codes(torch.zeros(2, 0, dtype=torch.long), **FIELDS, num_samples=0)
    codes, header = decode_codes(data)
    assert codes.shape == (1, 2, 0) and header.num_samples == 0


def test_every_single_byte_flip_is_detected():
    data, _ = sample_file()
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        with pytest.raises(ContainerError):
            decode_codes(bytes(bad))


def test_payload_flip_reports_crc_mismatch():
    data, _ = sample_file()
    bad = bytearray(data)
    bad[-6] ^= 0x01
    with pytest.raises(ContainerError, match="corrupt.*CRC32 mismatch"):
        decode_codes(bytes(bad))


def test_truncation_at_every_point_names_what_is_missing():
    data, _ = sample_file()
    head_len = struct.unpack_from("<I", data, 6)[0]
    for cut in range(len(data)):
        with pytest.raises(ContainerError) as err:
            decode_codes(data[:cut])
        msg = str(err.value)
        if cut == 0:
            assert "not an aetk audio file" in msg
        elif cut < 10 + head_len:
            assert "truncated header" in msg and "expected" in msg and "got" in msg
        else:
            want = len(data) - 10 - head_len
            assert f"truncated payload: expected {want} bytes" in msg and f"got {cut - 10 - head_len}" in msg


def test_trailing_bytes():
    data, _ = sample_file()
    with pytest.raises(ContainerError, match="trailing bytes"):
        decode_codes(data + b"\0")


@pytest.mark.parametrize("blob", [b"RIFF\x24\0\0\0WAVEfmt ", b"\x89PNG", b"aetk" + bytes(20), b"x"])
def test_wrong_magic(blob):
    with pytest.raises(ContainerError, match="not an aetk audio file"):
        decode_codes(blob)


def test_wrong_version():
    data, _ = sample_file()
    bad = bytearray(data)
    struct.pack_into("<H", bad, 4, FORMAT_VERSION + 1)
    with pytest.raises(ContainerError, match=f"unsupported .aetk format version {FORMAT_VERSION + 1}"):
        decode_codes(bytes(bad))


def test_huge_header_length_is_rejected_without_reading():
    data, _ = sample_file()
    bad = bytearray(data)
    struct.pack_into("<I", bad, 6, 2 ** 31)
    with pytest.raises(ContainerError, match="header length"):
        decode_codes(bytes(bad))


def _valid_header_dict() -> dict:
    data, _ = sample_file()
    head_len = struct.unpack_from("<I", data, 6)[0]
    return json.loads(data[10:10 + head_len])


@pytest.mark.parametrize("change, message", [
    ({"kbps": 1.0}, "kbps"),
    ({"num_samples": 7 * 320 + 1}, "exceeds num_frames"),
    ({"num_samples": 6 * 320}, "fewer than num_frames"),
    ({"codebook_bits": 17}, "codebook_bits must be in 1..16"),
    ({"codebook_size": 2000}, "does not fit in 10 bits"),
    ({"sample_rate": "24000"}, "sample_rate must be an integer"),
    ({"n_quantizers": True}, "n_quantizers must be an integer"),
    ({"model_hash": "XYZ"}, "model_hash"),
    ({"channels": 0}, "channels must be at least 1"),
])
def test_inconsistent_header_fields(change, message):
    header = {**_valid_header_dict(), **change}
    with pytest.raises(ContainerError, match=f"inconsistent header: .*{message}"):
        decode_codes(rebuild(header, bytes(-(-3 * 7 * 10 // 8))))


def test_missing_and_unknown_header_keys():
    header = _valid_header_dict()
    del header["hop_length"]
    header["bitrate"] = 3
    with pytest.raises(ContainerError, match=r"missing keys \['hop_length'\], unknown keys \['bitrate'\]"):
        decode_codes(rebuild(header, b""))


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"[1, 2]", b"{not json", b"[" * 50000])
def test_header_not_a_json_object(raw):
    body = struct.pack("<4sHI", MAGIC, FORMAT_VERSION, len(raw)) + raw
    with pytest.raises(ContainerError, match="corrupt header"):
        decode_codes(body + struct.pack("<I", zlib.crc32(body)))


def test_codes_out_of_range_on_read():
    header = {**_valid_header_dict(), "codebook_size": 1000, "n_quantizers": 1, "num_frames": 1,
              "num_samples": 320, "kbps": 10 * 24000 / 320 / 1000}
    payload = (1023).to_bytes(2, "little")  # a 10-bit code beyond the 1000-entry codebook
    with pytest.raises(ContainerError, match="codes out of range: found code 1023"):
        decode_codes(rebuild(header, payload))


def test_nonzero_padding_bits():
    header = {**_valid_header_dict(), "n_quantizers": 1, "num_frames": 1, "num_samples": 320,
              "kbps": 10 * 24000 / 320 / 1000}
    with pytest.raises(ContainerError, match="padding bits"):
        decode_codes(rebuild(header, bytes([0x00, 0x80])))


@pytest.mark.parametrize("codes, fields, message", [
    (torch.tensor([[0, 1024, 5]]), {}, r"codes out of range: values span \[0, 1024\]"),
    (torch.tensor([[-1, 3, 5]]), {}, "codes out of range"),
    (torch.tensor([[0.5]]), {}, "integer tensor"),
    (torch.zeros(2, 2, 2, 2, dtype=torch.long), {}, "shape"),
    (torch.zeros(1, 3, dtype=torch.long), {"num_samples": 5000}, "exceeds num_frames"),
    (torch.zeros(1, 3, dtype=torch.long), {"hop_length": 0}, "hop_length must be at least 1"),
    (torch.zeros(1, 3, dtype=torch.long), {"codebook_bits": 0}, "codebook_bits"),
    (torch.zeros(1, 3, dtype=torch.long), {"model_hash": "short"}, "model_hash"),
])
def test_write_rejects_bad_input(codes, fields, message):
    with pytest.raises(ContainerError, match=message):
        encode_codes(codes, **{**FIELDS, "num_samples": 3 * 320, **fields})


def test_state_dict_hash():
    a = {"w": torch.ones(2, 3), "b": torch.zeros(3), "n": torch.tensor(3)}
    h = state_dict_hash(a)
    assert len(h) == 16 and h == state_dict_hash(dict(reversed(list(a.items()))))  # order-free
    assert h != state_dict_hash({**a, "b": torch.full((3,), 1e-7)})  # any weight change
    assert h != state_dict_hash({**a, "w": torch.ones(3, 2)})  # shape matters
    assert h != state_dict_hash({**a, "w": torch.ones(2, 3, dtype=torch.float64)})  # dtype matters


def test_header_is_a_frozen_dataclass():
    _, header = encode_codes(random_codes(2, 4, 10), **FIELDS, num_samples=4 * 320)
    assert isinstance(header, AudioCodesHeader) and header.duration == pytest.approx(4 * 320 / 24000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.sample_rate = 1  # type: ignore[misc]


def test_achieved_kbps():
    # 1 s of audio in 750 bytes = 6 kbit/s; 0.5 s in 750 bytes = 12 kbit/s.
    assert achieved_kbps(750, 24000, 24000) == pytest.approx(6.0)
    assert achieved_kbps(750, 12000, 24000) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="num_samples"):
        achieved_kbps(10, 0, 24000)
