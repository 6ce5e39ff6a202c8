"""The `.aetk` compressed-audio file: a codec's discrete codes, bit-packed, with what is needed to decode them.

Format version 1 (all integers little-endian)::

    offset      size  field
    0           4     magic b"AETK"
    4           2     format version, uint16 (= 1)
    6           4     header length H, uint32 (at most 65536)
    10          H     header: a UTF-8 JSON object, exactly the keys of `AudioCodesHeader`
    10 + H      P     payload: the codes, `codebook_bits` bits each, frame-major
    10 + H + P  4     CRC32 (zlib) of every byte before it (magic to the end of the payload)

Header keys: model_hash (hex string, a sha256 prefix of the model's weights, 8..64 characters),
sample_rate, hop_length (samples per code frame), channels, n_quantizers, codebook_bits (1..16),
codebook_size (2 .. 2 ** codebook_bits), num_frames, num_samples (the original length before padding,
at most num_frames * hop_length), kbps (= n_quantizers * codebook_bits * sample_rate / hop_length / 1000).

Payload: codes of shape (channels, n_quantizers, num_frames) written in the order frame, channel,
quantizer (frame-major, so a stream can be cut at any frame boundary); each code takes `codebook_bits`
bits, least-significant bit first, bits filling each byte from its least-significant bit
(numpy `packbits(bitorder="little")`); the last byte's unused bits are zero. So
P = ceil(channels * n_quantizers * num_frames * codebook_bits / 8).

Any malformed input raises `ContainerError` naming what is wrong (bad magic, unsupported version, truncated
header or payload with expected and actual sizes, CRC mismatch, codes out of range, inconsistent header).
A change to the layout or the header's keys is a new format version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

MAGIC = b"AETK"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 65536
_PREAMBLE = struct.Struct("<4sHI")  # magic, version, header length
_CRC = struct.Struct("<I")


class ContainerError(ValueError):
    """A `.aetk` audio file (or the codes given to write one) is malformed."""


@dataclass(frozen=True)
class AudioCodesHeader:
    """What a decoder needs besides the codes; see the module docstring for each field's constraints."""

    model_hash: str
    """Hex prefix of the sha256 of the model's weights (`state_dict_hash`), to refuse the wrong decoder."""
    sample_rate: int
    hop_length: int
    """Samples per code frame (the codec's total stride)."""
    channels: int
    n_quantizers: int
    codebook_bits: int
    codebook_size: int
    num_frames: int
    num_samples: int
    """Length of the original audio before padding to whole frames."""
    kbps: float

    @property
    def payload_bytes(self) -> int:
        return math.ceil(self.channels * self.n_quantizers * self.num_frames * self.codebook_bits / 8)

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


_INT_FIELDS = ("sample_rate", "hop_length", "channels", "n_quantizers", "codebook_bits", "codebook_size",
               "num_frames", "num_samples")


def nominal_kbps(*, n_quantizers: int, codebook_bits: int, sample_rate: int, hop_length: int) -> float:
    """Bits per second of the codes alone, in kbit/s (no header, no padding)."""
    return n_quantizers * codebook_bits * sample_rate / hop_length / 1000


def state_dict_hash(state_dict: Mapping[str, torch.Tensor], *, length: int = 16) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in sorted name order, as `length` hex digits."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def validate_header(header: AudioCodesHeader) -> None:
    """Raise ContainerError if a field has the wrong type or the fields contradict each other."""
    def bad(msg: str) -> ContainerError:
        return ContainerError(f"inconsistent header: {msg}")

    for name in _INT_FIELDS:
        v = getattr(header, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad(f"{name} must be an integer, got {v!r}")
    if not isinstance(header.kbps, (int, float)) or isinstance(header.kbps, bool):
        raise bad(f"kbps must be a number, got {header.kbps!r}")
    h = header.model_hash
    if not (isinstance(h, str) and 8 <= len(h) <= 64 and all(c in "0123456789abcdef" for c in h)):
        raise bad(f"model_hash must be 8 to 64 lowercase hex digits, got {h!r}")
    for name in ("sample_rate", "hop_length", "channels", "n_quantizers"):
        if getattr(header, name) < 1:
            raise bad(f"{name} must be at least 1, got {getattr(header, name)}")
    if not 1 <= header.codebook_bits <= 16:
        raise bad(f"codebook_bits must be in 1..16, got {header.codebook_bits}")
    if not 2 <= header.codebook_size <= 2 ** header.codebook_bits:
        raise bad(f"codebook_size {header.codebook_size} does not fit in {header.codebook_bits} bits "
                  f"(must be in 2..{2 ** header.codebook_bits})")
    if header.num_frames < 0 or header.num_samples < 0:
        raise bad(f"num_frames ({header.num_frames}) and num_samples ({header.num_samples}) must be >= 0")
    if header.num_samples > header.num_frames * header.hop_length:
        raise bad(f"num_samples {header.num_samples} exceeds num_frames * hop_length = "
                  f"{header.num_frames} * {header.hop_length}")
    if header.num_frames > 0 and header.num_samples <= (header.num_frames - 1) * header.hop_length:
        raise bad(f"num_samples {header.num_samples} needs fewer than num_frames = {header.num_frames} "
                  f"frames of {header.hop_length} samples")
    want = nominal_kbps(n_quantizers=header.n_quantizers, codebook_bits=header.codebook_bits,
                        sample_rate=header.sample_rate, hop_length=header.hop_length)
    if not math.isclose(header.kbps, want, rel_tol=1e-6, abs_tol=1e-9):
        raise bad(f"kbps {header.kbps} != n_quantizers * codebook_bits * sample_rate / hop_length / 1000 "
                  f"= {want}")


# --- bit packing -----------------------------------------------------------------------------------------

def pack_codes(values: np.ndarray, bits: int) -> bytes:
    """1-D non-negative ints < 2 ** bits -> bytes, `bits` per value, LSB first."""
    v = values.astype(np.uint32)
    bit_matrix = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)  # (N, bits)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_codes(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of `pack_codes`: (count,) int64. Raises ContainerError if the padding bits are not zero."""
    flat = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
    if flat[count * bits:].any():
        raise ContainerError("corrupt payload: the padding bits after the last code are not zero")
    bit_matrix = flat[:count * bits].reshape(count, bits).astype(np.int64)  # (N, bits)
    return (bit_matrix << np.arange(bits, dtype=np.int64)).sum(axis=1)


# --- write / read ----------------------------------------------------------------------------------------

def encode_codes(codes: torch.Tensor, *, model_hash: str, sample_rate: int, hop_length: int,
                 num_samples: int, codebook_bits: int, codebook_size: int | None = None
                 ) -> tuple[bytes, AudioCodesHeader]:
    """codes (n_q, frames) or (channels, n_q, frames) integers -> (file bytes, header).

    n_quantizers, num_frames and channels come from the shape; kbps from the rates. `codebook_size`
    defaults to 2 ** codebook_bits. Raises ContainerError for codes out of range or bad fields.
    """
    if not isinstance(codes, torch.Tensor):
        raise ContainerError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ContainerError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3:
        raise ContainerError(f"codes must have shape (n_q, frames) or (channels, n_q, frames), "
                             f"got {tuple(codes.shape)}")
    channels, n_q, frames = codes.shape
    if codebook_size is None:
        codebook_size = 2 ** codebook_bits if isinstance(codebook_bits, int) else -1
    try:
        kbps = nominal_kbps(n_quantizers=n_q, codebook_bits=codebook_bits, sample_rate=sample_rate,
                            hop_length=hop_length)
    except (TypeError, ZeroDivisionError):  # a bad field: validate_header names it
        kbps = float("nan")
    header = AudioCodesHeader(
        model_hash=model_hash, sample_rate=sample_rate, hop_length=hop_length, channels=channels,
        n_quantizers=n_q, codebook_bits=codebook_bits, codebook_size=codebook_size, num_frames=frames,
        num_samples=num_samples, kbps=kbps)
    validate_header(header)
    arr = codes.detach().cpu().to(torch.int64).numpy()
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise ContainerError(f"codes out of range: values span [{arr.min()}, {arr.max()}], the codebook has "
                             f"{codebook_size} entries (0..{codebook_size - 1})")
    frame_major = arr.transpose(2, 0, 1).reshape(-1)  # (frames * channels * n_q,)
    payload = pack_codes(frame_major, codebook_bits)
    head = json.dumps(dataclasses.asdict(header), sort_keys=True, separators=(",", ":")).encode()
    body = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(head)) + head + payload
    return body + _CRC.pack(zlib.crc32(body)), header


def write_codes(dest: str | os.PathLike | BinaryIO, codes: torch.Tensor, **fields) -> AudioCodesHeader:
    """Write a `.aetk` file to a path or a binary file object; `fields` as `encode_codes`. Returns the header."""
    data, header = encode_codes(codes, **fields)
    if hasattr(dest, "write"):
        dest.write(data)
    else:
        with open(dest, "wb") as f:
            f.write(data)
    return header


def decode_codes(data: bytes) -> tuple[torch.Tensor, AudioCodesHeader]:
    """File bytes -> (codes LongTensor (channels, n_q, frames), header). Raises ContainerError if malformed."""
    n = len(data)
    if data[:len(MAGIC)] != MAGIC[:min(n, len(MAGIC))] or n == 0:
        raise ContainerError(f"not an aetk audio file: expected magic {MAGIC!r}, got {bytes(data[:4])!r}")
    if n < _PREAMBLE.size:
        raise ContainerError(f"truncated header: expected at least {_PREAMBLE.size} bytes, got {n}")
    _, version, head_len = _PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ContainerError(f"unsupported .aetk format version {version} (this aetk reads version "
                             f"{FORMAT_VERSION})")
    if head_len > MAX_HEADER_BYTES:
        raise ContainerError(f"corrupt header: header length {head_len} exceeds the limit {MAX_HEADER_BYTES}")
    head_end = _PREAMBLE.size + head_len
    if n < head_end:
        raise ContainerError(f"truncated header: expected {head_len} header bytes, got {n - _PREAMBLE.size}")
    header = _parse_header(data[_PREAMBLE.size:head_end])
    expected = header.payload_bytes + _CRC.size
    got = n - head_end
    if got < expected:
        raise ContainerError(f"truncated payload: expected {expected} bytes after the header "
                             f"({header.payload_bytes} of codes + 4 of CRC), got {got}")
    if got > expected:
        raise ContainerError(f"corrupt file: {got - expected} unexpected trailing bytes after the CRC "
                             f"(expected {expected} bytes after the header, got {got})")
    (stored,) = _CRC.unpack_from(data, n - _CRC.size)
    computed = zlib.crc32(data[:n - _CRC.size])
    if stored != computed:
        raise ContainerError(f"corrupt file: CRC32 mismatch (stored {stored:08x}, computed {computed:08x})")
    count = header.channels * header.n_quantizers * header.num_frames
    flat = unpack_codes(data[head_end:n - _CRC.size], count, header.codebook_bits)  # (frames * C * n_q,)
    if count and flat.max() >= header.codebook_size:
        raise ContainerError(f"codes out of range: found code {flat.max()} for a codebook of "
                             f"{header.codebook_size} entries")
    codes = flat.reshape(header.num_frames, header.channels, header.n_quantizers).transpose(1, 2, 0)
    return torch.from_numpy(np.ascontiguousarray(codes)), header  # (C, n_q, frames)


def read_codes(src: str | os.PathLike | BinaryIO) -> tuple[torch.Tensor, AudioCodesHeader]:
    """Read a `.aetk` file from a path or a binary file object: (codes (channels, n_q, frames), header)."""
    if hasattr(src, "read"):
        data = src.read()
    else:
        with open(src, "rb") as f:
            data = f.read()
    return decode_codes(bytes(data))


def _parse_header(raw: bytes) -> AudioCodesHeader:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ContainerError(f"corrupt header: not UTF-8 JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ContainerError(f"corrupt header: expected a JSON object, got {type(obj).__name__}")
    names = [f.name for f in dataclasses.fields(AudioCodesHeader)]
    missing, unknown = sorted(set(names) - set(obj)), sorted(set(obj) - set(names))
    if missing or unknown:
        raise ContainerError(f"inconsistent header: missing keys {missing}, unknown keys {unknown}")
    header = AudioCodesHeader(**obj)
    validate_header(header)
    return header


def achieved_kbps(num_bytes: int, num_samples: int, sample_rate: int) -> float:
    """Bitrate of a compressed file in kbit/s: num_bytes * 8 / duration / 1000."""
    if num_samples <= 0 or sample_rate <= 0:
        raise ValueError(f"need num_samples > 0 and sample_rate > 0, got {num_samples} and {sample_rate}")
    return num_bytes * 8 / (num_samples / sample_rate) / 1000


__all__ = ["MAGIC", "FORMAT_VERSION", "AudioCodesHeader", "ContainerError", "achieved_kbps", "decode_codes",
           "encode_codes", "nominal_kbps", "read_codes", "state_dict_hash", "validate_header", "write_codes"]
