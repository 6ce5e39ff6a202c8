"""Quantizers under data parallelism, at the shipped recipes' settings: two processes (gloo), each with
half of every batch, end with the same state as one process with the whole batch, bit for bit.

This covers every statistic a quantizer keeps or draws: k-means initialisation (with fewer rows than
codes, as the recipes have), EMA cluster sizes and sums, dead-code restarts, residual levels and
quantizer dropout. Sums run over the gathered global batch in the global order (`gather_rows`): an
all-reduce of per-process partial sums rounds differently in the last bit, and nearest-code ties
turn that bit into another assignment within a few steps.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tokenizers_ae.quantizers import build_quantizer

# (quantizer config as a recipe builds it, latent channels, rows per batch): vq-f4-tiny at 32 px
# (batch 4 of 8x8 latents: 256 rows for 1024 codes), codec-tiny (batch 8 of 1 s at 75 Hz), fsq-f8.
RECIPES = {
    "vq-f4-tiny": ({"class": "VectorQuantizer", "codebook_size": 1024, "dim": 8, "ema_decay": 0.99,
                    "dead_code_threshold": 0.05, "kmeans_init": True}, (4, 8, 8, 8)),
    "codec-tiny": ({"class": "ResidualVQ", "num_quantizers": 8, "codebook_size": 1024, "dim": 64,
                    "quantizer_dropout": 1.0, "ema_decay": 0.99, "dead_code_threshold": 0.05,
                    "kmeans_init": True}, (8, 64, 75)),
    "fsq-f8": ({"class": "FSQ", "levels": [8, 5, 5, 5], "dim": 4}, (4, 4, 8, 8)),
}
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, name: str, port: int, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    config, shape = RECIPES[name]
    torch.manual_seed(0)  # the same initial state and RNG on every process, as `set_seed` gives
    q = build_quantizer(config).train()
    history = []
    for step in range(STEPS):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(step))  # the global batch
        x = x.chunk(world)[rank]  # this process's half, in rank order
        result = q(x)
        history.append({"state": {k: v.clone() for k, v in q.state_dict().items()},
                        "stats": {k: v.clone() for k, v in result.stats.items()}})
    if rank == 0:
        torch.save(history, out)
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_two_processes_keep_the_state_of_one(name, tmp_path):
    _run(0, 1, name, 0, str(tmp_path / "one.pt"))
    mp.spawn(_run, args=(2, name, _free_port(), str(tmp_path / "two.pt")), nprocs=2)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    for step, (a, b) in enumerate(zip(one, two)):
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key]), f"step {step}: {key} differs"
        for key in a["stats"]:
            assert torch.equal(a["stats"][key], b["stats"][key]), f"step {step}: stat {key} differs"
    if name != "fsq-f8":  # the settings that make it hard: restarts happened, codes were moved
        first = one[0]["state"]
        last = one[-1]["state"]
        key = next(k for k in first if k.endswith("codebook"))
        assert not torch.equal(first[key], last[key])
