"""engine.ema.Ema: torch's AveragedModel EMA without warm-up, TF's with it, and its use."""
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from spnas.engine.ema import Ema


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 2))


def train(net: nn.Module, steps: int, after_step) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=gen)
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        after_step(step)


def test_without_warmup_it_is_torchs_averaged_model():
    net = small_net()
    mine, torchs = Ema(net, 0.9, warmup=False), AveragedModel(
        net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    train(net, 5, lambda step: (mine(step), torchs.update_parameters(net)))
    for a, b in zip(mine.deploy.state_dict().values(), torchs.module.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b)
    bn = mine.deploy[1]
    assert not torch.equal(bn.running_mean, torch.zeros(4))  # BN statistics are averaged too
    assert int(bn.num_batches_tracked) == int(net[1].num_batches_tracked) == 5  # copied
    assert not torch.equal(mine.deploy[0].weight, net[0].weight)


def test_with_warmup_the_decay_is_tfs_and_the_average_follows_it():
    net = small_net()
    ema = Ema(net, 0.99, warmup=True)
    assert [ema.decay_at(s) for s in (0, 1, 8)] == pytest.approx([2 / 11, 3 / 12, 10 / 19])
    assert ema.decay_at(10 ** 6) == 0.99
    assert Ema(net, 0.99, warmup=False).decay_at(0) == 0.0  # the first step copies
    expected = net[0].weight.detach().clone()
    weights = []
    train(net, 4, lambda step: (ema(step), weights.append(net[0].weight.detach().clone())))
    for step, w in enumerate(weights):
        expected = expected.lerp(w, 1 - ema.decay_at(step))
    assert torch.allclose(ema.deploy[0].weight, expected, rtol=0, atol=1e-7)


def test_the_deploy_copy_is_not_trained():
    net = small_net()
    ema = Ema(net, 0.5, warmup=True)
    assert all(not p.requires_grad for p in ema.deploy.parameters())
    assert all(p.requires_grad for p in net.parameters())
