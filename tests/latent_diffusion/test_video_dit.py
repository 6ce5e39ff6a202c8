"""The video DiT's class conditioning: cross-attention to one class token, or DiT's adaLN-Zero."""

import torch

from latent_diffusion.video_dit import ClassVideoDiT


def tiny(adaln_class: bool) -> ClassVideoDiT:
    torch.manual_seed(0)
    return ClassVideoDiT(in_channels=4, num_layers=2, num_heads=2, head_dim=12, num_classes=10,
                         adaln_class=adaln_class).eval()


def randomise(net: ClassVideoDiT) -> None:
    """Weights as after training: adaLN-Zero's zeros would hide every path."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))


X = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(2))  # (B, c, t, h, w)
T = torch.tensor([10, 600])


def test_adaln_zero_starts_as_zero_and_then_every_block_learns():
    net = tiny(True).train()
    out = net(X, T, class_labels=torch.tensor([1, 3])).sample
    assert out.shape == X.shape and out.abs().max() == 0  # the output projection starts at zero
    for block in net.transformer.blocks:  # both residual gates start closed
        assert block.scale_shift_table[:, 2].abs().max() == 0 and block.scale_shift_table[:, 5].abs().max() == 0
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # step 1 moves the output projection; step 2 reaches the gates and the class table
        opt.zero_grad()
        ((net(X, T, class_labels=torch.tensor([1, 3])).sample - X) ** 2).mean().backward()
        opt.step()
    assert net.class_table.weight.grad[[1, 3]].abs().sum() > 0
    assert all(b.scale_shift_table.grad[:, 2].abs().sum() > 0 for b in net.transformer.blocks)


def test_the_class_reaches_the_blocks_through_adaln_only_when_asked():
    """With every cross-attention output cut, only adaLN can carry the class."""
    for adaln, differs in ((True, True), (False, False)):
        net = tiny(adaln)
        randomise(net)
        with torch.no_grad():
            for block in net.transformer.blocks:
                block.attn2.to_out[0].weight.zero_()
                block.attn2.to_out[0].bias.zero_()
            a = net(X, T, class_labels=torch.tensor([1, 1])).sample
            b = net(X, T, class_labels=torch.tensor([7, 7])).sample
        assert (not torch.allclose(a, b, atol=1e-6)) == differs, adaln


def test_the_choice_is_saved_and_old_directories_load_as_cross_attention(tmp_path):
    net = tiny(True)
    randomise(net)
    net.save_pretrained(tmp_path / "new")
    loaded = ClassVideoDiT.from_pretrained(tmp_path / "new").eval()
    assert loaded.config.adaln_class
    with torch.no_grad():
        torch.testing.assert_close(loaded(X, T, class_labels=torch.tensor([2, 5])).sample,
                                   net(X, T, class_labels=torch.tensor([2, 5])).sample, rtol=0, atol=0)
    old = tiny(False)
    old.save_pretrained(tmp_path / "old")
    config = (tmp_path / "old/config.json").read_text().replace('"adaln_class": false,', "")
    (tmp_path / "old/config.json").write_text(config)  # as written before the option existed
    assert "adaln_class" not in config
    assert not ClassVideoDiT.from_pretrained(tmp_path / "old").config.adaln_class
