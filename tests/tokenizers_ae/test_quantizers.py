"""Quantizers: straight-through gradients, exact nearest codes, EMA / restart / k-means state,
index <-> code round trips, residual levels, and N processes matching one."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F

from tokenizers_ae.quantizers import FSQ, LFQ, ResidualVQ, VectorQuantizer, codebook_stats, kmeans, nearest_codes
from tokenizers_ae.quantizers.lfq import bit_logits, codebook_entropy, per_sample_entropy

QUANTIZERS = {
    "vq": lambda: VectorQuantizer(codebook_size=16, dim=4),
    "vq-ema": lambda: VectorQuantizer(codebook_size=16, dim=4, ema_decay=0.9, dead_code_threshold=1.0),
    "vq-cosine-kmeans": lambda: VectorQuantizer(codebook_size=16, dim=4, cosine=True, kmeans_init=True),
    "vq-factorised": lambda: VectorQuantizer(codebook_size=16, dim=4, codebook_dim=2),
    "rvq": lambda: ResidualVQ(num_quantizers=3, codebook_size=8, dim=4, ema_decay=0.9),
    "rvq-factorised": lambda: ResidualVQ(num_quantizers=2, codebook_size=8, dim=4, codebook_dim=2),
    "fsq": lambda: FSQ(levels=[4, 3, 5, 2]),
    "fsq-projected": lambda: FSQ(levels=[8, 5], dim=4),
    "lfq": lambda: LFQ(dim=None, codebook_bits=4),
    "lfq-projected": lambda: LFQ(dim=4, codebook_bits=12),
}
SHAPES = {"image": (2, 4, 3, 5), "audio": (3, 4, 7)}


def brute_force_nearest(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """argmin_k ||x - e_k|| from explicit differences in float64."""
    return torch.cdist(x.double(), codes.double(), compute_mode="donot_use_mm_for_euclid_dist").argmin(1)


def rows(z: torch.Tensor) -> torch.Tensor:
    """(B, D, *spatial) -> (N, D)."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


# --- straight-through ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUANTIZERS)
def test_gradient_reaches_the_input(name):
    torch.manual_seed(0)
    q = QUANTIZERS[name]().train()
    z = torch.randn(*SHAPES["image"], requires_grad=True)
    out = q(z)
    assert out.quantized.shape == z.shape
    out.quantized.square().sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["vq", "vq-ema", "rvq"])
def test_vq_gradient_is_the_identity(name):
    torch.manual_seed(0)
    q = QUANTIZERS[name]().train()
    z = torch.randn(*SHAPES["audio"], requires_grad=True)
    upstream = torch.randn(SHAPES["audio"])
    (q(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)


def test_learned_codebook_gets_gradient_only_through_used_codes():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=64, dim=4).train()
    out = q(torch.randn(1, 4, 5))
    out.losses["vq/codebook"].backward()
    touched = q.codebook.grad.abs().sum(1) > 0
    assert torch.equal(touched, torch.bincount(out.indices.flatten(), minlength=64) > 0)


# --- exact nearest-code search ------------------------------------------------------------------


@pytest.mark.parametrize("num_codes", [1, 37, 300])  # 300: two-level argmin over padded groups
@pytest.mark.parametrize("block_rows", [1, 7, 64, None])
def test_nearest_codes_is_exact_at_any_block_size(block_rows, num_codes):
    torch.manual_seed(0)
    x, codes = torch.randn(50, 5), torch.randn(num_codes, 5)  # 50 rows: not a multiple of 7 or 64
    assert torch.equal(nearest_codes(x, codes, block_rows=block_rows), brute_force_nearest(x, codes))


def test_nearest_codes_ties_go_to_the_lowest_index():
    torch.manual_seed(0)
    codes = torch.randn(200, 3).repeat(2, 1)  # code i == code i + 200, across search groups
    x = torch.cat([codes[:200], torch.randn(50, 3)])
    found = nearest_codes(x, codes)
    assert torch.equal(found, brute_force_nearest(x, codes)) and found.max() < 200


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_vq_indices_are_the_nearest_codes(cosine, shape):
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=33, dim=4, cosine=cosine).eval()
    z = torch.randn(shape) * 2
    x, codes = rows(z), q.codebook.detach()
    if cosine:
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    assert torch.equal(q(z).indices.flatten(), brute_force_nearest(x, codes))


def test_indices_do_not_change_under_bf16_autocast():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=64, dim=4).eval()
    z = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert torch.equal(out.indices, q(z).indices) and out.quantized.dtype == torch.float32


def test_no_n_by_k_tensor_is_kept_for_backward():
    torch.manual_seed(0)
    n, k = 64, 128
    q = VectorQuantizer(codebook_size=k, dim=4).train()
    z = torch.randn(1, 4, n, requires_grad=True)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = q(z)
        loss = out.quantized.sum() + out.losses["vq/codebook"] + out.losses["vq/commitment"]
    loss.backward()
    assert saved and max(saved) < n * k / 8


# --- EMA, dead codes, k-means -------------------------------------------------------------------


def test_ema_update_matches_hand_computation():
    decay, eps = 0.5, VectorQuantizer.laplace_eps
    q = VectorQuantizer(codebook_size=3, dim=2, ema_decay=decay).train()
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-4.0, 4.0]])
    with torch.no_grad():
        q.codebook.copy_(codebook)
        q.cluster_size.fill_(1.0)
        q.embed_sum.copy_(codebook)
    x = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.9, 1.0], [5.0, 5.0]])  # codes 0, 0, 1, 1; code 2 unused
    out = q(x.t().unsqueeze(0))  # (1, 2, 4)
    assert out.indices.tolist() == [[0, 0, 1, 1]]
    # N_k <- d N_k + (1 - d) n_k ;  m_k <- d m_k + (1 - d) sum_{x -> k} x
    n_k = torch.tensor([2.0, 2.0, 0.0])
    sums = torch.stack([x[0] + x[1], x[2] + x[3], torch.zeros(2)])
    size = decay * torch.ones(3) + (1 - decay) * n_k
    embed_sum = decay * codebook + (1 - decay) * sums
    # Laplace smoothing: N_k <- (N_k + eps) / (n + K eps) * n, n = sum_k N_k ; e_k = m_k / N_k
    n = size.sum()
    smoothed = (size + eps) / (n + 3 * eps) * n
    torch.testing.assert_close(q.cluster_size, size)
    torch.testing.assert_close(q.embed_sum, embed_sum)
    torch.testing.assert_close(q.codebook, embed_sum / smoothed[:, None])
    assert "vq/codebook" not in out.losses
    # The batch was quantized with the codebook as it was before the update.
    torch.testing.assert_close(out.quantized, codebook[[0, 0, 1, 1]].t().unsqueeze(0))


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_are_restarted_from_batch_vectors(ema):
    torch.manual_seed(0)
    kw = {"ema_decay": 0.99} if ema else {"dead_code_window": 1}
    q = VectorQuantizer(codebook_size=4, dim=3, dead_code_threshold=1.0, **kw).train()
    live = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    with torch.no_grad():
        q.codebook.copy_(torch.cat([live, torch.full((2, 3), 1e3)]))  # codes 2 and 3: unreachable
        if ema:
            q.embed_sum.copy_(q.codebook)
    z = (live[torch.arange(16) % 2] + 0.1 * torch.randn(16, 3)).t().reshape(1, 3, 16)
    out = q(z)
    assert set(out.indices.unique().tolist()) == {0, 1}
    assert out.stats["vq/dead_codes"] == 2
    batch = rows(z)
    for code in q.codebook[2:]:
        assert (batch - code).abs().sum(1).min() == 0  # now exactly a vector of the batch
    if not ema:
        assert torch.equal(q.codebook[:2], live)  # live codes untouched (no optimizer step)
    assert q(z).stats["vq/dead_codes"] == 0  # restarted codes are alive now


def test_dead_codes_wait_for_the_usage_window():
    q = VectorQuantizer(codebook_size=4, dim=2, dead_code_threshold=1.0, dead_code_window=3).train()
    z = torch.zeros(1, 2, 8)
    assert [q(z).stats["vq/dead_codes"].item() for _ in range(4)] == [0, 0, 3, 0]


def test_eval_forward_leaves_state_alone():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=8, dim=2, ema_decay=0.9, dead_code_threshold=5.0, kmeans_init=True)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()(torch.randn(2, 2, 16))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


@pytest.mark.parametrize("ema", [False, True])
def test_kmeans_initialises_from_the_first_training_batch_only(ema):
    torch.manual_seed(0)
    k = 4
    q = VectorQuantizer(codebook_size=k, dim=2, kmeans_init=True, ema_decay=0.9 if ema else None)
    centres = torch.tensor([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    x = centres[torch.arange(64) % 4] + 0.1 * torch.randn(64, 2)
    z = x.t().unsqueeze(0)  # (1, 2, 64)
    random_error = ((x - q.codebook[brute_force_nearest(x, q.codebook)]) ** 2).mean()
    with torch.no_grad():
        q.eval()(z)
    assert not q.initialized  # eval never initialises
    torch.manual_seed(1)
    expected, counts = kmeans(x, k, iters=q.kmeans_iters)
    torch.manual_seed(1)
    out = q.train()(z)
    assert q.initialized
    if ema:  # then one EMA step from the k-means state, with sizes = cluster counts
        torch.testing.assert_close(q.cluster_size, 0.9 * counts.clamp_min(1) + 0.1 * counts)
    else:
        torch.testing.assert_close(q.codebook.data, expected)
    # A Lloyd fixed point: every used code is the mean of the vectors assigned to it.
    assigned = brute_force_nearest(x, expected)
    for c in assigned.unique():
        torch.testing.assert_close(expected[c], x[assigned == c].mean(0))
    assert out.losses["vq/commitment"] < random_error / 10
    frozen = q.codebook.detach().clone()
    q(z + 50.0)  # second batch, far away: no second initialisation
    if not ema:
        assert torch.equal(q.codebook.data, frozen)


def test_kmeans_on_fewer_rows_than_codes_restarts_the_empty_clusters_at_once():
    """A small batch (8 x 0.5 s of 75 Hz audio: 300 rows for 1024 codes) leaves most k-means
    clusters empty; with a low restart threshold they must not sit as duplicates for hundreds of steps."""
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=64, dim=4, ema_decay=0.99, dead_code_threshold=0.05, kmeans_init=True).train()
    z = torch.randn(1, 4, 16)  # 16 rows, 64 codes
    out = q(z)
    used = out.indices.unique().numel()
    assert out.stats["vq/dead_codes"] == 64 - used  # every empty cluster, in the first update
    unused = torch.ones(64, dtype=torch.bool)
    unused[out.indices.unique()] = False
    batch = rows(z)
    for code in q.codebook[unused]:
        assert (batch - code).abs().sum(1).min() == 0  # restarted onto a vector of the batch
    torch.testing.assert_close(q.cluster_size[unused], torch.full((64 - used,), 0.05))


# --- factorised lookup, round trips -------------------------------------------------------------


@pytest.mark.parametrize("cosine", [False, True])
def test_factorised_lookup_shapes_and_round_trip(cosine):
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=16, dim=8, codebook_dim=2, cosine=cosine).eval()
    assert q.codebook.shape == (16, 2) and q.project_in.weight.shape == (2, 8)
    z = torch.randn(2, 8, 4, 4)
    out = q(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (2, 4, 4)
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    x = q.project_in(rows(z))
    x, codes = (F.normalize(x, dim=-1), F.normalize(q.codebook, dim=-1)) if cosine else (x, q.codebook)
    assert torch.equal(out.indices.flatten(), brute_force_nearest(x.detach(), codes.detach()))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", QUANTIZERS)
def test_indices_to_codes_round_trip(name, shape):
    torch.manual_seed(0)
    q = QUANTIZERS[name]()
    z = torch.randn(shape)
    q.train()(z)  # initialise / update state first
    out = q.eval()(z)
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    assert out.indices.dtype == torch.long
    expected_indices = (shape[0], q.num_quantizers, *shape[2:]) if isinstance(q, ResidualVQ) else (shape[0], *shape[2:])
    assert out.indices.shape == expected_indices
    assert all(v.ndim == 0 for v in (*out.losses.values(), *out.stats.values()))
    assert not any(v.requires_grad for v in out.stats.values())


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [4, 3], [2, 2, 2], [7]])
def test_fsq_indices_cover_the_codebook(levels):
    q = FSQ(levels=levels)
    size = math.prod(levels)
    assert q.codebook_size == size
    every = torch.arange(size)
    codes = q.indices_to_codes(every.reshape(1, size))  # (1, d, size)
    assert torch.unique(codes.squeeze(0).t(), dim=0).shape[0] == size  # all distinct
    assert codes.abs().max() <= 1
    sweep = torch.linspace(-20, 20, 2001).expand(1, len(levels), 2001)  # (1, d, T), far past saturation
    out = q(sweep)
    assert out.indices.min() >= 0 and out.indices.max() < size
    digits = [sorted(set(q.digits(out.indices)[..., i].flatten().tolist())) for i in range(len(levels))]
    assert digits == [list(range(l)) for l in levels]  # every level of every channel is reachable


def test_fsq_even_levels_follow_the_paper():
    q = FSQ(levels=[4, 3])
    z = torch.linspace(-6, 6, 101).expand(1, 2, 101)
    values = [sorted(set(q(z).quantized[0, i].tolist())) for i in range(2)]
    assert values == [[-1.0, -0.5, 0.0, 0.5], [-1.0, 0.0, 1.0]]


def test_lfq_codes_are_signs_and_indices_their_bits():
    torch.manual_seed(0)
    q = LFQ(dim=None, codebook_bits=5)
    z = torch.randn(2, 5, 3, 3)
    out = q(z)
    torch.testing.assert_close(out.quantized, torch.where(z > 0, 1.0, -1.0))
    bits = (out.indices.unsqueeze(1) >> torch.arange(5).reshape(1, 5, 1, 1)) & 1
    assert torch.equal(bits.bool(), z > 0)
    assert out.indices.min() >= 0 and out.indices.max() < 2**5 == q.codebook_size


def test_lfq_entropy_exact_and_factorised():
    torch.manual_seed(0)
    bits, t = 4, 1.0
    x = torch.randn(64, bits, dtype=torch.float64)
    codes = ((torch.arange(2**bits)[:, None] >> torch.arange(bits)) & 1).double() * 2 - 1  # (16, 4)
    p = torch.softmax(-torch.cdist(x, codes) ** 2 / t, dim=1)  # (64, 16) brute force
    h = lambda prob: -(prob * prob.log()).sum(-1)  # noqa: E731
    logits = bit_logits(x, t)
    torch.testing.assert_close(per_sample_entropy(logits), h(p).mean())
    exact = codebook_entropy(logits, group_bits=bits)
    torch.testing.assert_close(exact, h(p.mean(0)))
    pairs, per_bit = codebook_entropy(logits, group_bits=2), codebook_entropy(logits, group_bits=1)
    assert exact <= pairs <= per_bit  # finer factorisation: a looser upper bound
    q = LFQ(dim=None, codebook_bits=bits, entropy_temperature=t).double()
    out = q(x.t().unsqueeze(0))
    torch.testing.assert_close(out.losses["lfq/entropy"], h(p).mean() - h(p.mean(0)))
    assert LFQ(dim=None, codebook_bits=18).entropy_group_bits == 1  # large codebooks: per-bit


def test_codebook_stats():
    s = codebook_stats(torch.tensor([[0, 0, 1, 1], [-1, -1, 0, 1]]), 4)
    assert s["vq/usage"] == 0.5
    torch.testing.assert_close(s["vq/perplexity"], torch.tensor(2.0))
    big = codebook_stats(torch.tensor([0, 5, 5, 2**40]), 2**41, prefix="lfq")
    torch.testing.assert_close(big["lfq/usage"], torch.tensor(3 / 2**41))


# --- residual VQ --------------------------------------------------------------------------------


def test_rvq_error_decreases_with_every_level():
    torch.manual_seed(0)
    q = ResidualVQ(num_quantizers=4, codebook_size=8, dim=4, ema_decay=0.8, kmeans_init=True).train()
    z = torch.randn(8, 4, 16)
    for _ in range(5):
        q(z)
    q.eval()
    errors = [F.mse_loss(q(z, n_quantizers=n).quantized, z).item() for n in range(1, 5)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    out = q(z, n_quantizers=2)
    assert (out.indices[:, 2:] == -1).all() and (out.indices[:, :2] >= 0).all()
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)


@pytest.mark.parametrize("cosine, codebook_dim", [(False, None), (True, None), (False, 2)])
@pytest.mark.parametrize("built_in_inference_mode", [False, True])  # codebooks without version counters
def test_rvq_encode_gives_the_eval_forward_indices(cosine, codebook_dim, built_in_inference_mode):
    torch.manual_seed(0)
    with torch.inference_mode(built_in_inference_mode):
        q = ResidualVQ(num_quantizers=4, codebook_size=8, dim=4, cosine=cosine, codebook_dim=codebook_dim).eval()
    z = torch.randn(3, 4, 5)
    with torch.no_grad():  # inference-mode parameters cannot enter an autograd graph
        for n in (1, 3, 4):
            assert torch.equal(q.encode(z, n), q(z, n_quantizers=n).indices[:, :n])


def test_rvq_decode_sums_the_first_levels():
    torch.manual_seed(0)
    q = ResidualVQ(num_quantizers=4, codebook_size=8, dim=4).eval()
    indices = torch.randint(0, 8, (2, 2, 5))
    padded = torch.cat([indices, torch.full((2, 2, 5), -1)], dim=1)
    assert torch.allclose(q.decode(indices), q.indices_to_codes(padded))
    with pytest.raises(ValueError, match="5 levels"):
        q.decode(torch.zeros(2, 5, 3, dtype=torch.long))


def test_rvq_encode_sees_codebooks_changed_by_training():
    """`encode` caches each codebook's search table; EMA / k-means / restarts change codebooks
    through `.data` (no version bump), so a training forward must drop the cache."""
    torch.manual_seed(0)
    q = ResidualVQ(num_quantizers=2, codebook_size=8, dim=4, ema_decay=0.5, kmeans_init=True,
                   dead_code_threshold=0.5).eval()
    z = torch.randn(3, 4, 5)
    before = q.encode(z)
    q.train()(z * 3 + 1)  # k-means moves every code
    q.eval()
    assert torch.equal(q.encode(z), q(z).indices)
    assert not torch.equal(q.encode(z), before)


def test_rvq_dropout_uses_fewer_levels_in_training_only():
    q = ResidualVQ(num_quantizers=4, codebook_size=8, dim=4, quantizer_dropout=0.5, ema_decay=0.9)
    z = torch.randn(2, 4, 8)

    def levels_used() -> list[int]:
        torch.manual_seed(0)
        return [int((q(z).indices[0, :, 0] >= 0).sum()) for _ in range(30)]

    q.train()
    used = levels_used()
    assert set(used) == {1, 2, 3, 4}
    assert used == levels_used()  # deterministic under torch.manual_seed
    q.eval()
    assert set(levels_used()) == {4}


# --- several processes --------------------------------------------------------------------------

DIST_VQ = {"codebook_size": 8, "dim": 3, "ema_decay": 0.8, "dead_code_threshold": 0.9, "kmeans_init": True}


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn(4, 3, 8, generator=g) + 4.0 * step for step in range(3)]  # drifting data


def _run_vq(batches: list[torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    q = VectorQuantizer(**DIST_VQ).train()
    dead = [q(b.chunk(world)[rank]).stats["vq/dead_codes"] for b in batches]
    return {"codebook": q.codebook, "cluster_size": q.cluster_size, "dead": torch.stack(dead)}


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_run_vq(_batches(), rank, world), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_with_half_batches_match_one(tmp_path):
    """EMA + k-means init + dead-code restarts on 2 gloo processes = 1 process on the full batch."""
    torch.multiprocessing.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _run_vq(_batches(), 0, 1)
    assert single["dead"].sum() > 0  # restarts really happened
    for key in ("codebook", "cluster_size"):
        assert torch.equal(ranks[0][key], ranks[1][key])
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-5, atol=1e-5)
    assert torch.equal(ranks[0]["dead"], single["dead"])


def test_benchmark_runs_and_checks_exact_indices():
    from eval.bench.quantizer import bench_quantizer

    res = bench_quantizer(codebook_size=300, dim=4, n_vectors=256, steps=1, reference=False, threads=1)
    assert res["aetk"]["indices_exact"] and res["aetk"]["vectors_per_s"] > 0
    assert res["aetk"]["peak_rss_increase_mb"] >= 0 and "reference" not in res
