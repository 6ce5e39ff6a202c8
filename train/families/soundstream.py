"""`model.kind: soundstream` -- the neural audio codec: causal SEANet encoder/decoder around a residual
VQ with quantizer dropout (one model, several bitrates); multi-scale mel + STFT + waveform losses,
MS-STFT and multi-period discriminators with feature matching. Saved in aetk's native format;
exported as a transformers EncodecModel.

Hooks import their parts when called (see `train/families/base.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from train.config import AudioData, Config, ConfigError, GANLoss, QuantizerConfig, check
from train.families.base import EncodeRequest, EvalContext, ExportRequest, Family, ReportRequest


@dataclass
class RVQConfig(QuantizerConfig):
    """The codec's residual VQ (`type` is always rvq)."""

    type: Literal["rvq"] = "rvq"


@dataclass
class SoundStreamModel:
    kind: Literal["soundstream"] = "soundstream"
    init_from: str | None = None
    """An aetk codec run, checkpoint or model/ directory with this recipe's architecture: its weights
    and codebooks carry over; the losses, data and schedule are this recipe's (e.g. a GAN / mel phase
    after a waveform phase)."""
    sample_rate: int = 24000
    """Model rate, Hz (audio is resampled to it on load)."""
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    """Decoder upsampling strides (the encoder uses them reversed); hop = their product."""
    n_filters: int = 32
    """Channels of the first stage, doubled at every downsampling (unless `stage_channels`)."""
    stage_channels: list[int] | None = None
    """Explicit widths, sample-rate stage first, len(ratios)+1 of them: compute sits in the early
    (high-rate) stages, parameters in the late ones, so a fast codec is narrow early, wide late."""
    dimension: int = 128
    """Latent channels per frame (the quantizer's input)."""
    lstm_layers: int = 2
    """LSTM layers at the bottleneck (0: none)."""
    n_residual_layers: int = 1
    """Residual units per stage (dilations dilation_base**j)."""
    dilation_base: int = 2
    quantizer: RVQConfig = field(default_factory=RVQConfig)
    """The residual VQ: `levels` codebooks of `codebook_size` codes, `dropout` for bitrate scalability."""

    def __post_init__(self) -> None:
        check(self.sample_rate >= 1000, "model.sample_rate", ">= 1000 Hz")
        check(len(self.ratios) >= 1 and all(r >= 1 for r in self.ratios), "model.ratios", "positive strides")
        check(self.stage_channels is None or len(self.stage_channels) == len(self.ratios) + 1,
              "model.stage_channels", "null or len(ratios)+1 widths")
        check(self.dimension >= 1 and self.n_filters >= 1, "model.dimension", ">= 1 (and n_filters)")
        check(self.lstm_layers >= 0 and self.n_residual_layers >= 1, "model.lstm_layers",
              ">= 0 (and n_residual_layers >= 1)")


@dataclass
class AudioLoss(GANLoss):
    mel_weight: float = 15.0
    """Multi-scale mel L1 (log + magnitude, DAC's windows 32..2048) weight."""
    stft_weight: float = 1.0
    """Multi-scale log-STFT + spectral convergence weight."""
    waveform_weight: float = 0.1
    """Waveform L1 weight."""
    feature_weight: float = 2.0
    """Feature-matching weight (MelGAN / EnCodec)."""
    commitment_weight: float = 0.25
    """Residual VQ commitment loss weight (beta)."""
    codebook_weight: float = 1.0
    """Residual VQ codebook loss weight (only without EMA updates)."""
    discriminators: list[Literal["msstft", "mpd"]] = field(default_factory=lambda: ["msstft", "mpd"])
    """EnCodec's multi-scale STFT discriminator and/or HiFi-GAN's multi-period one."""
    msstft_filters: int = 64
    """Channels of each multi-scale STFT sub-discriminator."""
    mpd_channels: list[int] = field(default_factory=lambda: [32, 128, 512, 1024, 1024])
    """Channels of each multi-period sub-discriminator (HiFi-GAN's; narrower trains faster)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("mel_weight", "stft_weight", "waveform_weight", "feature_weight", "commitment_weight",
                  "codebook_weight"):
            check(getattr(self, k) >= 0, f"loss.{k}", ">= 0")


def check_recipe(cfg: Config) -> None:
    m, q = cfg.model, cfg.model.quantizer
    if q.ema_decay is not None and q.dead_code_threshold > 0:
        # An EMA cluster size tends to the code's vectors per forward, so under uniform use to
        # (frames per forward) / codebook_size; at or above that threshold every code is restarted
        # every step and no codebook ever settles.
        frames = math.ceil(round(cfg.data.segment_seconds * m.sample_rate) / math.prod(m.ratios))
        mean_size = cfg.train.batch_size / cfg.train.grad_accum * frames / q.codebook_size
        check(q.dead_code_threshold < mean_size, "model.quantizer.dead_code_threshold",
              f"below the mean EMA cluster size, batch_size / grad_accum * frames per segment / "
              f"codebook_size = {mean_size:.3g} (else every code is restarted every step)")


def build_model(cfg: Config):
    from audio_codec.model import SoundStream, build_soundstream
    from tokenizers_ae.pretrained import LoadError

    m: SoundStreamModel = cfg.model
    q = m.quantizer
    model = build_soundstream(
        sample_rate=m.sample_rate, n_filters=m.n_filters, ratios=tuple(m.ratios), dimension=m.dimension,
        lstm_layers=m.lstm_layers, stage_channels=m.stage_channels, n_residual_layers=m.n_residual_layers,
        dilation_base=m.dilation_base, num_quantizers=q.levels, quantizer_dropout=q.dropout,
        **{k: v for k, v in q.vq_kwargs(m.dimension).items() if k != "dim"})
    if m.init_from:
        try:
            source = SoundStream.from_pretrained(m.init_from)
            model.load_state_dict(source.state_dict())
        except LoadError as e:
            raise ConfigError(f"model.init_from: {e}") from None
        except RuntimeError as e:  # missing / unexpected keys or other shapes, listed by torch
            raise ConfigError(f"model.init_from: {m.init_from} has another architecture than this recipe: "
                              f"{' '.join(str(e).split())[:400]}") from None
    return model


def build_task(cfg: Config, model):
    from audio_codec.discriminators import CombinedDiscriminator, MultiPeriodDiscriminator, MultiScaleSTFTDiscriminator
    from audio_codec.losses import AudioReconstructionLoss, MultiScaleMelLoss, MultiScaleSTFTLoss
    from train.parts import gan_task

    loss: AudioLoss = cfg.loss
    rec = AudioReconstructionLoss(
        mel=MultiScaleMelLoss(sample_rate=cfg.model.sample_rate), stft=MultiScaleSTFTLoss(),
        mel_weight=loss.mel_weight, stft_weight=loss.stft_weight, waveform_weight=loss.waveform_weight)
    table = {"msstft": lambda: MultiScaleSTFTDiscriminator(filters=loss.msstft_filters),
             "mpd": lambda: MultiPeriodDiscriminator(channels=tuple(loss.mpd_channels))}
    discs = [table[name]() for name in dict.fromkeys(loss.discriminators)]
    weights = {"vq/commitment": loss.commitment_weight, "vq/codebook": loss.codebook_weight}
    return gan_task(cfg, model, rec_loss=rec, discriminator=CombinedDiscriminator(discs) if discs else None,
                    reg_weights=weights, feature_weight=loss.feature_weight)


def datasets(cfg: Config):
    from train.data.sources import audio_datasets

    return audio_datasets(cfg, cfg.model.sample_rate)


def evaluate(ctx: EvalContext) -> dict[str, float]:
    """SI-SNR and mel distance of the validation clips at the full rate and at each standard bitrate
    the model has (1.5/3/6/12 kbps at 24 kHz); WAVs and a spectrogram figure."""
    import torch

    from eval.audio import audio_metrics, save_audio_examples, save_spectrogram_grid

    model = ctx.model
    was_training = model.training
    model.eval()
    x = ctx.val_batch["x"]
    sr = model.sample_rate
    out = {}
    levels = sorted({n for n in (2, 4, 8, 16, model.num_quantizers) if n <= model.num_quantizers})
    with torch.no_grad():
        for n in levels:
            with ctx.autocast():
                recon = model(x, n_quantizers=n).recon.float().clamp(-1, 1)
            m = audio_metrics(recon, x, sample_rate=sr)
            out.update({f"eval/{k}@{model.bitrate(n) / 1000:g}kbps": v for k, v in m.items()})
    out.update({f"eval/{k}": v for k, v in m.items()})  # at the full rate
    model.train(was_training)
    save_audio_examples(x, recon, ctx.samples / f"audio-{ctx.step:07d}", sample_rate=sr)
    save_spectrogram_grid(x, recon, ctx.samples / f"spectrogram-{ctx.step:07d}.png", sample_rate=sr)
    return out


def export(cfg: Config, model, train_dataset, out: Path) -> None:
    model.save_pretrained(out)


def encode(model, req: EncodeRequest) -> dict:
    from latent_diffusion.encode import encode_audio

    return encode_audio(model, req.data, req.out, segment_seconds=req.segment_seconds, shard_size=req.shard_size,
                        kbps=req.kbps, batch_size=req.batch_size, num_workers=req.num_workers, state=req.processes)


def report(model, req: ReportRequest) -> dict:
    from eval.audio_report import evaluate_audio

    if not req.data:
        raise ConfigError("--data is required: a folder of held-out audio files")
    return evaluate_audio(model, req.data, n=req.n or 16, segment_seconds=req.segment_seconds,
                          kbps_list=req.kbps or (1.5, 3, 6, 12), opus=req.opus, out_dir=req.out_dir, name=req.name,
                          protocol=req.protocol)


def export_encodec(model, req: ExportRequest) -> str:
    from audio_codec.encodec_export import save_encodec

    return f"wrote a transformers EncodecModel to {save_encodec(model, req.out)}"


def export_native(model, req: ExportRequest) -> str:
    return f"wrote aetk's native format to {model.save_pretrained(req.out)}"


# The request options each verb's hook reads: a flag outside them is refused (Family.reads).
READS = {
    "encode": frozenset({
        "data", "out", "processes", "batch_size", "shard_size", "num_workers", "segment_seconds", "kbps"}),
    "eval": frozenset({"name", "data", "n", "kbps", "segment_seconds", "opus", "out_dir", "protocol"}),
    "export": frozenset({"out"}),
}

FAMILY = Family(
    kind="soundstream", summary="SoundStream-style neural audio codec (causal SEANet + residual VQ, streaming)",
    model=SoundStreamModel, data=AudioData, loss=AudioLoss, saved_names=("SoundStream",), check=check_recipe,
    build_model=build_model, build_task=build_task, datasets=datasets, evaluator=lambda: evaluate, export=export,
    encode=encode, report=report, exports={"encodec": export_encodec, "aetk": export_native},
    reads=READS)
