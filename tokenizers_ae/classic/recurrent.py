"""Sequence-to-sequence autoencoder (Srivastava et al. 2015; Sutskever et al. 2014 for the shape):
an RNN reads the sequence, its last state becomes the code, and a second RNN unrolls the sequence
from the code alone (it sees the code at every step, never the input), so everything it
reconstructs went through the bottleneck.

Input (B, 1, T, F) images are read as T rows of F values (a digit, top to bottom) or (B, T, F)
sequences directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tokenizers_ae.classic.base import ClassicOutput, ClassicPretrained, Hparams, NoiseFn, mse

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class Seq2SeqAutoencoder(ClassicPretrained, nn.Module):
    variants = ("recurrent",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> Seq2SeqAutoencoder:
        if len(shape) != 3:
            raise ValueError(f"variant recurrent needs images (C, H, W), not inputs of shape {shape}")
        return cls(input_shape=shape, hidden_size=c.hidden_sizes[0], code_size=c.code_size, cell=c.rnn)

    def __init__(self, *, input_shape: Sequence[int], hidden_size: int, code_size: int, cell: str = "gru") -> None:
        super().__init__()
        self.input_shape, self.code_size = tuple(input_shape), code_size
        self.steps, self.features = self.input_shape[-2:]
        self.encoder_rnn = CELLS[cell](self.features, hidden_size, batch_first=True)
        self.to_code = nn.Linear(hidden_size, code_size)
        self.decoder_rnn = CELLS[cell](code_size, hidden_size, batch_first=True)
        self.to_output = nn.Linear(hidden_size, self.features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *input_shape) -> code (B, code_size) from the encoder's last hidden state."""
        seq = x.reshape(x.shape[0], self.steps, self.features)  # (B, T, F)
        _, state = self.encoder_rnn(seq)
        h_last = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c); (1, B, H)
        return self.to_code(h_last[-1])  # (B, code)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, code_size) -> (B, *input_shape): the code is the decoder's input at every step."""
        out, _ = self.decoder_rnn(z.unsqueeze(1).expand(-1, self.steps, -1))  # (B, T, H)
        return self.to_output(out).reshape(-1, *self.input_shape)  # (B, T, F) -> input shape

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None) -> ClassicOutput:
        z = self.encode(x)
        recon = self.decode(z)
        return ClassicOutput(recon=recon, latent=z, rec_loss=mse(recon, x))
