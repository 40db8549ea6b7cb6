import random
import re

import pytest
import torch

from spnas.arch import Arch
from spnas.spaces import build_child
from spnas.spaces.spos import TOKENS, WIDTHS, SposSupernet, spos_space

LAYOUTS = {"cifar": (32, [1] * 4 + [2] + [1] * 3 + [2] + [1] * 11),
           "imagenet": (224, [2] + [1] * 3 + [2] + [1] * 3 + [2] + [1] * 7 + [2] + [1] * 3)}


@pytest.fixture(scope="module")
def supernets():
    torch.manual_seed(0)
    return {lay: SposSupernet(spos_space(layout=lay), 10).eval() for lay in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("choice", range(len(TOKENS)), ids=lambda c: TOKENS[c])
def test_every_choice_of_every_layer(supernets, layout, choice):
    """Each layer with each block: output shape (width, stride) as the layout says."""
    res, strides = LAYOUTS[layout]
    net = supernets[layout]
    x = torch.randn(2, 3, res, res)
    size = res // (2 if layout == "imagenet" else 1)  # stem stride
    with torch.no_grad():
        h = net.stem(x)
        for i, layer in enumerate(net.layers):
            h = layer[choice](h)
            size //= strides[i]
            assert h.shape == (2, WIDTHS[i], size, size), (i, h.shape)
        out = net.head(h)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_extract_matches_supernet(supernets, layout):
    net = supernets[layout]
    res = 64 if layout == "imagenet" else 32
    rng = random.Random(0)
    x = torch.randn(4, 3, res, res)
    for _ in range(3):
        arch = Arch.sample(net.spec, rng)
        child = net.extract(arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(child(x), net(x, arch), rtol=1e-5, atol=1e-5)
        # a standalone network has affine BN; the supernet has none
        assert any(m.affine for m in child.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert not any(m.affine for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_extract_matches_in_training_mode_too():
    torch.manual_seed(1)
    net = SposSupernet(spos_space(6, 4), 10).train()
    arch = Arch.sample(net.spec, random.Random(3))
    child = net.extract(arch).train()
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(child(x), net(x, arch), rtol=1e-5, atol=1e-5)


def test_layers_and_num_choices_truncate_the_space():
    spec = spos_space(layers=6, num_choices=2)
    net = SposSupernet(spec, 100)
    assert len(net.layers) == 6 and spec.stages == (4, 2)
    assert all(isinstance(layer[c], torch.nn.Identity) for layer in net.layers for c in (2, 3))
    out = net(torch.randn(2, 3, 32, 32), Arch.parse("k3 k5 k3 k5 k3 k5", spec))
    assert out.shape == (2, 100)


def test_unsampled_choices_untouched_by_an_optimizer_step():
    torch.manual_seed(0)
    spec = spos_space(4, 4)
    net = SposSupernet(spec, 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    first, second = Arch(spec, (0, 0, 0, 0)), Arch(spec, (1, 1, 1, 1))
    for arch in (first, second):  # momentum now holds velocity for choice 0
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x, arch), y).backward()
        if arch is second:
            assert all(p.grad is None for p in net.layers[0][0].parameters())
            before = {n: p.detach().clone() for n, p in net.named_parameters() if "layers.0.0." in n}
        opt.step()
    after = {n: p for n, p in net.named_parameters() if "layers.0.0." in n}
    for n in before:  # neither momentum nor weight decay moved the unsampled block
        torch.testing.assert_close(after[n], before[n], rtol=0, atol=0)
    unused = [p for n, p in net.named_parameters() if re.match(r"layers\.\d+\.[23]\.", n)]
    assert unused and all(p not in opt.state or not opt.state[p] for p in unused)


def test_build_child_rebuilds_from_arch():
    arch = Arch.parse("k5 k3 x k5 x k3 x k3 k3 x x k3 k5 k3 k5 k7 k7 k5 k5 x", spos_space())
    net = build_child(arch, 10, dropout=0.1)
    assert net.arch == arch and net.classifier.out_features == 10
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


BEST = "k5 k3 x k5 x k3 x k3 k3 x x k3 k5 k3 k5 k7 k7 k5 k5 x"  # the original's best path


@pytest.mark.parametrize("layout,params,macs", [("cifar", 2_257_232, 173_211_648),
                                                ("imagenet", 2_376_976, 324_476_480)])
def test_the_original_best_path_has_its_published_size(layout, params, macs):
    """Sizes of the original SPOS CIFAR code's network (split units at layers 0 and 16 of the
    CIFAR layout, no classifier bias), counted as multiply-accumulates at 32 or 224 pixels."""
    from spnas.stages.profile import profile_arch
    r = profile_arch(Arch.parse(BEST, spos_space(layout=layout)), 10, warmup=0, repeats=1, batch=1)
    assert (r["params"], r["macs"]) == (params, macs)


@pytest.mark.parametrize("layer,cin,cout", [(0, 16, 64), (16, 320, 640)])
def test_width_changes_at_stride_one_split_the_input(layer, cin, cout):
    """CIFAR layout: half the input passes through; the branch maps cin/2 to cout - cin/2."""
    net = SposSupernet(spos_space(layout="cifar"), 10)
    for choice in range(len(TOKENS)):
        unit = net.layers[layer][choice]
        convs = [m for m in unit.modules() if isinstance(m, torch.nn.Conv2d)]
        assert unit.split and unit.proj is None
        assert convs[0].in_channels == cin // 2 and convs[-1].out_channels == cout - cin // 2


def test_branch_takes_the_even_channels_and_comes_first():
    """The original's order: even channels through the branch, output [branch, odd channels]."""
    unit = SposSupernet(spos_space(layout="cifar"), 10).layers[1][0].eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        y = unit(x)
        torch.testing.assert_close(y[:, 32:], x[:, 1::2], rtol=0, atol=0)
        torch.testing.assert_close(y[:, :32], unit.main(x[:, 0::2]), rtol=0, atol=0)


def test_init_is_the_originals():
    """normal(0, 1/shape[1]) convs, BN weight 1 / bias 1e-4, classifier normal(0, 0.01), no bias."""
    torch.manual_seed(0)
    net = build_child(Arch.parse(BEST, spos_space()), 10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    for m in convs:
        if m.weight.numel() > 2000:
            assert abs(m.weight.std().item() * m.weight.shape[1] - 1) < 0.1, m
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 1e-4).all() for m in bns)
    assert net.classifier.bias is None and abs(net.classifier.weight.std().item() - 0.01) < 1e-3
    acts = [type(m) for m in net.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
    assert acts[0] is torch.nn.ReLU6 and acts[-1] is torch.nn.ReLU6
    assert set(acts[1:-1]) == {torch.nn.ReLU}
