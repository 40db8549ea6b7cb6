import random

import pytest
import torch
from torch import nn

from spnas.arch import Arch, ArchError
from spnas.cost import count_params, uniform_archs
from spnas.errors import SpnasError
from spnas.spaces import build_child, build_supernet, make_space
from spnas.spaces.mbconv import (
    MASK_AT,
    PUBLISHED,
    STAGE_WIDTHS,
    TOKENS,
    MbconvNet,
    SuperkernelNet,
    arch_gates,
    decode_gates,
    indicator,
    layer_geometry,
    mbconv_space,
)

# Layer strides after the stem (stem stride: cifar 1, imagenet 2).
LAYOUTS = {"cifar": (32, 1, (1, 2, 2, 1, 2)), "imagenet": (64, 2, (2, 2, 2, 1, 2))}


pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_bn(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics (beta far from 0)."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen)
            m.running_mean = torch.randn(n, generator=gen)
            m.running_var = torch.rand(n, generator=gen) + 0.5


@pytest.fixture(scope="module")
def cifar_superkernel():
    torch.manual_seed(0)
    net = SuperkernelNet(mbconv_space("cifar"), 10, dropout=0.0)
    randomise_bn(net)
    return net


def test_space_spec_forbids_skip_first_in_each_stage():
    spec = make_space("mbconv", "cifar")
    assert spec.num_layers == 20 and spec.stages == (4,) * 5 and spec.tokens == TOKENS
    firsts = {0, 4, 8, 12, 16}
    for i, allowed in enumerate(spec.allowed):
        assert (TOKENS.index("skip") in allowed) == (i not in firsts)
    with pytest.raises(ArchError, match="token 6: layer 4 cannot be 'skip'"):
        Arch.parse("k3e3 k3e3 k3e3 k3e3 | skip k3e3 k3e3 k3e3 | " + " ".join(["k3e3"] * 12), spec)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layer_widths_and_strides(layout):
    res, stem_stride, stage_strides = LAYOUTS[layout]
    net = MbconvNet(Arch.sample(mbconv_space(layout), random.Random(1)), 10).eval()
    size = res // stem_stride
    with torch.no_grad():
        h = net.stem(torch.randn(1, 3, res, res))
        assert h.shape == (1, 16, size, size)
        for i, layer in enumerate(net.layers):
            h = layer(h)
            size //= stage_strides[i // 4] if i % 4 == 0 else 1
            assert h.shape == (1, STAGE_WIDTHS[i // 4], size, size), (i, h.shape)
        assert net.head(h).shape == (1, 10)


def test_paper_network_has_the_reference_parameter_count():
    # timm 1.0.31 `spnasnet_100` (the Single-Path NAS ImageNet network, 1000 classes):
    # sum(p.numel() for p in timm.create_model("spnasnet_100").parameters()) == 4421616.
    arch = Arch.parse(PUBLISHED, mbconv_space("imagenet"))
    net = build_child(arch, 1000)
    assert isinstance(net, MbconvNet) and isinstance(net.layers[3], nn.Identity)
    assert count_params(net) == 4421616


def test_indicator_is_a_step_forward_and_the_sigmoid_gradient_backward():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 3.0], requires_grad=True)
    y = indicator(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) * s * (1 - s))


@pytest.mark.parametrize("token", TOKENS)
def test_superkernel_layer_at_each_option_equals_the_standalone_layer(cifar_superkernel, token):
    """Every layer with gates fixed to ``token`` (where allowed) == the extracted layer."""
    net = cifar_superkernel
    arch = uniform_archs(net.spec)[TOKENS.index(token)]
    child = net.extract(arch)
    gates = arch_gates(arch)
    gen = torch.Generator().manual_seed(1)
    for i, (cin, _, _) in enumerate(layer_geometry(net.spec)):
        expected = token if token in [net.spec.tokens[c] for c in net.spec.allowed[i]] else "k3e3"
        assert arch[i] == TOKENS.index(expected)
        assert isinstance(child.layers[i], nn.Identity) == (expected == "skip")
        for training in (True, False):
            sk, std = net.layers[i].train(training), child.layers[i].train(training)
            x = torch.randn(2, cin, 8, 8, generator=gen)
            with torch.no_grad():
                torch.testing.assert_close(sk(x, gates[i]), std(x), rtol=1e-5, atol=1e-5)
    net.eval()


def test_thresholds_decide_decode_and_extract(cifar_superkernel):
    net = cifar_superkernel
    assert str(net.decode()) == " | ".join([" ".join(["k5e6"] * 4)] * 5)  # thresholds start at 0
    big = 1e3
    with torch.no_grad():
        net.layers[0].thresholds[1] = big   # a stage's first layer cannot skip: no effect
        net.layers[1].thresholds[1] = big   # skip
        net.layers[2].thresholds[0] = big   # 3x3
        net.layers[5].thresholds[2] = big   # expansion 3
        net.layers[6].thresholds[:] = torch.tensor([big, 0.0, big])  # k3e3
    try:
        arch = net.decode()
        assert str(arch).split()[:8] == ["k5e6", "skip", "k3e6", "k5e6", "|",
                                         "k5e6", "k5e3", "k3e3"]
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            torch.testing.assert_close(net(x), net.extract().eval()(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(net(x), net(x, arch), rtol=0, atol=0)
    finally:
        with torch.no_grad():
            for t in net.thresholds():
                t.zero_()


def test_decode_and_arch_strings_round_trip():
    rng = random.Random(0)
    for layout in LAYOUTS:
        spec = mbconv_space(layout)
        for _ in range(20):
            arch = Arch.sample(spec, rng)
            assert decode_gates(arch_gates(arch), spec) == arch
            assert Arch.parse(str(arch), spec) == arch
    spec = mbconv_space("cifar")
    gates = arch_gates(Arch.parse(PUBLISHED.replace("skip", "k3e3"), spec))
    gates[0, 1] = 0.0  # layer 0 gated off: a stage's first layer cannot be skip
    with pytest.raises(ArchError, match="layer 0 cannot be 'skip'"):
        decode_gates(gates, spec)


def _perturb_gated_off(net: SuperkernelNet, layer: int) -> None:
    """Change everything a k3e3 layer must not use: ring, high half and its BN."""
    sk = net.layers[layer]
    half = sk.mid // 2
    with torch.no_grad():
        sk.dw[0].weight.add_(sk.ring_mask * 5.0)
        sk.dw[0].weight[half:] += 3.0
        sk.expand[0].weight[half:] *= -2.0
        for bn in (sk.expand[1], sk.dw[1]):
            bn.bias[half:] += 4.0
            bn.running_mean[half:] -= 2.0
        sk.project[0].weight[:, half:] *= 3.0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gated_off_channels_contribute_nothing(mode):
    torch.manual_seed(0)
    spec = mbconv_space("imagenet")
    arch = Arch.parse(" | ".join(["k3e3 k3e3 skip skip"] * 5), spec)
    x = torch.randn(2, 3, 64, 64)
    outs = {}
    for mask_at in MASK_AT:
        net = SuperkernelNet(spec, 10, dropout=0.0, mask_at=mask_at)
        randomise_bn(net)
        net.train(mode == "train")
        with torch.no_grad():
            before = net(x, arch)
            for i, c in enumerate(arch):
                _perturb_gated_off(net, i)
                if spec.tokens[c] == "skip":  # a skipped layer's whole branch is off
                    net.layers[i].project[1].bias += 1.0
            outs[mask_at] = (before, net(x, arch))
    torch.testing.assert_close(*outs["activation"], rtol=1e-5, atol=1e-5)
    if mode == "eval":  # the paper's kernel mask leaks BN's beta (cancelled by BN in training)
        assert (outs["kernel"][0] - outs["kernel"][1]).abs().max() > 1e-2


def test_kernel_mask_starves_the_channel_gates_of_cross_entropy_gradient():
    """BN after the depthwise conv ignores a channel group's scale: the paper's kernel mask
    gives d_e3 / d_e6 almost no CE gradient; gating activations gives them a real one."""
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    grads = {}
    for mask_at in MASK_AT:
        torch.manual_seed(0)
        net = SuperkernelNet(mbconv_space("imagenet"), 10, dropout=0.0, mask_at=mask_at)
        nn.functional.cross_entropy(net(x), y).backward()
        grads[mask_at] = torch.stack([t.grad for t in net.thresholds()]).abs().mean(0)
    k5, e3, e6 = (grads["kernel"] / grads["activation"]).tolist()
    assert e3 < 0.05 and e6 < 0.05 and 0.5 < k5 < 2  # the ring is a kernel shape either way


def test_gate_dropout_keeps_forced_gates_and_is_seeded():
    torch.manual_seed(0)
    net = SuperkernelNet(mbconv_space("imagenet"), 10)
    draws = []
    for seed in range(100):
        torch.manual_seed(seed)
        draws.append(net.gates(keep_prob=0.6))
    g = torch.stack(draws)  # [draws, layers, 3]
    assert (g[:, [0, 4, 8, 12, 16], 1] == 1).all()  # first layers never skip
    kept = g[:, 1, :].mean().item()
    assert 0.5 < kept < 0.7
    torch.manual_seed(7)
    again = net.gates(keep_prob=0.6)
    assert torch.equal(again, draws[7]) and torch.equal(net.gates(), torch.ones_like(again))


def test_superkernel_is_the_registered_supernet():
    spec = make_space("mbconv", "imagenet")
    net = build_supernet(spec, 10, dropout=0.1, mask_at="kernel")
    assert isinstance(net, SuperkernelNet) and net.layers[0].mask_at == "kernel"
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_space_option_is_one_line_error():
    with pytest.raises(SpnasError, match="space 'mbconv' has no option layers; its options: none"):
        make_space("mbconv", "cifar", layers=4)
    assert len(make_space("spos", "cifar", layers=4).allowed) == 4
