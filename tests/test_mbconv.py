import math
import random

import pytest
import torch
from torch import nn

from spnas.arch import Arch, ArchError
from spnas.engine.counting import count_params, uniform_archs
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


@pytest.mark.parametrize("init", ["spnas", "paper"])
def test_kernel_mask_starves_the_channel_gates_of_cross_entropy_gradient(init):
    """BN after the depthwise conv ignores a channel group's scale: the paper's kernel mask
    gives d_e3 / d_e6 almost no CE gradient; gating activations gives them a real one. At
    both inits (measured on the gates, dCE/dd: at the official init the sigmoid's slope
    at the start, below 6e-5, would scale both sides alike)."""
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    grads = {}
    for mask_at in MASK_AT:
        torch.manual_seed(0)
        net = SuperkernelNet(mbconv_space("imagenet"), 10, dropout=0.0, mask_at=mask_at, init=init)
        gates = net.gates().detach().requires_grad_()
        h = net.stem(x)
        for layer, g in zip(net.layers, gates):
            h = layer(h, g)
        nn.functional.cross_entropy(net.head(h), y).backward()
        grads[mask_at] = gates.grad.abs().mean(0)
    k5, e3, e6 = (grads["kernel"] / grads["activation"]).tolist()
    assert e3 < 0.02 and e6 < 0.02 and 0.5 < k5 < 2  # the ring is a kernel shape either way


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


# ---- the rules of the paper's superkernel that no other test pins down --------------------
@pytest.mark.parametrize("init", ["spnas", "paper"])
def test_activations_are_relu_not_relu6(init):
    """The paper's code uses tf.nn.relu everywhere (ReLU6 is MobileNetV2's, not this space's):
    every activation of the superkernel and of the standalone network is an unclipped ReLU."""
    spec = mbconv_space("imagenet")
    for net in (SuperkernelNet(spec, 10, init=init), MbconvNet(Arch.parse(PUBLISHED, spec), 10)):
        kinds = {type(m) for m in net.modules() if not list(m.children())}
        assert nn.ReLU in kinds and not kinds & {nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish}
        relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
        big = torch.full((4,), 10.0)
        assert all(torch.equal(m(big.clone()), big) for m in relus)


def _layer(seed: int = 0):
    torch.manual_seed(seed)
    return SuperkernelNet(mbconv_space("imagenet"), 10).layers[1]  # a layer that can skip


def test_thresholds_start_at_exactly_zero():
    for init in ("spnas", "paper"):
        net = SuperkernelNet(mbconv_space("cifar"), 10, init=init)
        assert all(torch.equal(t, torch.zeros(3)) for t in net.thresholds())


def test_gates_use_plain_l2_norms_of_whole_parts_and_the_sigmoid_gradient():
    """d = I(||part||_2 - t): the plain (not squared) norm over the whole part (every channel),
    and dd/dt = -sigmoid'(||part|| - t)."""
    sk = _layer()
    w, half = sk.dw[0].weight.detach(), sk.mid // 2
    ring = (w * sk.ring_mask).pow(2).sum().sqrt()
    centre = w * (1 - sk.ring_mask)
    low, high = (w[:half].pow(2).sum().sqrt(), w[half:].pow(2).sum().sqrt())
    assert not torch.isclose(centre[:half].pow(2).sum().sqrt(), low)  # the ring counts (d_k5 = 1)
    t = torch.tensor([0.3, -0.2, 0.1])
    with torch.no_grad():
        sk.thresholds.copy_(t)
    for i, part in enumerate([ring, low, high]):  # gates (d_k5, d_e3, d_e6)
        sk.thresholds.grad = None
        sk.gates()[i].backward()
        s = torch.sigmoid(part - t[i])
        assert sk.thresholds.grad[i].item() == pytest.approx(-(s * (1 - s)).item(), rel=1e-4)
    # between the norm and its square: on for the squared norm, off for the plain one
    for i, part in enumerate([ring, low, high]):
        sk = _layer()
        with torch.no_grad():
            sk.dw[0].weight.mul_(2.0 / part)  # this part's norm is now 2, its square 4
            sk.thresholds[i] = 3.0
            assert sk.gates()[i].item() == 0.0, i
            sk.thresholds[i] = 1.9
            assert sk.gates()[i].item() == 1.0, i


def test_the_kernel_is_decided_before_the_channel_norms():
    """The halves' norms are of W' = W_3x3 + d_k5 W_ring: with the ring off, a half whose
    5x5 norm is above its threshold but whose 3x3 norm is below it is off."""
    sk = _layer()
    w, half = sk.dw[0].weight.detach(), sk.mid // 2
    with_ring = w[half:].norm().item()
    centre_only = (w[half:] * (1 - sk.ring_mask)).norm().item()
    between = (with_ring + centre_only) / 2
    with torch.no_grad():
        sk.thresholds.copy_(torch.tensor([0.0, 0.0, between]))
        assert sk.gates().tolist() == [1.0, 1.0, 1.0]
        sk.thresholds[0] = 1e3  # the ring off: the high half's norm drops below `between`
        assert sk.gates().tolist() == [0.0, 1.0, 0.0]


def test_which_half_drives_which_gate():
    """d_e3 reads the first half of the depthwise channels, d_e6 the second half."""
    for zeroed, expected in (("low", [1.0, 0.0, 1.0]), ("high", [1.0, 1.0, 0.0])):
        sk = _layer()
        half = sk.mid // 2
        with torch.no_grad():
            w = sk.dw[0].weight
            (w[:half] if zeroed == "low" else w[half:]).zero_()
            sk.thresholds.fill_(1e-3)
            assert sk.gates().tolist() == expected, zeroed


@pytest.mark.parametrize("init, lo, hi", [("spnas", 0.9, 1.3), ("paper", 9.0, 40.0)])
def test_depthwise_part_norms_at_each_init(init, lo, hi):
    """Official/timm init: fan-out k k for a depthwise conv, so a part's norm grows with its
    width (about 10 to 38); torch's He init counts the channels, norms near 1."""
    torch.manual_seed(0)
    net = SuperkernelNet(mbconv_space("imagenet"), 10, init=init)
    norms = []
    for sk in net.layers:
        w, half = sk.dw[0].weight, sk.mid // 2
        norms += [(w * sk.ring_mask).norm().item(), w[:half].norm().item(), w[half:].norm().item()]
    assert lo < min(norms) and max(norms) < hi
    if init == "paper":
        w = net.layers[0].dw[0].weight
        assert w.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)
        fc = net.head[-1]
        bound = 1 / math.sqrt(10)
        assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound
        assert torch.equal(fc.bias, torch.zeros(10))
        stem = net.stem[0][0]  # a plain conv: fan-out k k out, as torch's He init
        assert stem.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.1)


def test_bn_eps_and_momentum_reach_every_batchnorm_and_the_extracted_network():
    spec = mbconv_space("cifar")
    net = SuperkernelNet(spec, 10, bn_eps=1e-3, bn_momentum=0.01)
    child = net.extract(Arch.parse(PUBLISHED, spec))
    for m in (*net.modules(), *child.modules()):
        if isinstance(m, nn.BatchNorm2d):
            assert (m.eps, m.momentum) == (1e-3, 0.01)


def test_gate_dropout_rescaling_is_tf_dropout():
    """rescale: a kept gate is 1 / keep_prob (TF1 tf.nn.dropout), a dropped one 0; forced
    gates (a stage's first layer cannot skip) stay 1."""
    torch.manual_seed(0)
    net = SuperkernelNet(mbconv_space("imagenet"), 10)
    g = torch.stack([net.gates(keep_prob=0.6, rescale=True) for _ in range(20)])
    free = torch.ones_like(g, dtype=torch.bool)
    free[:, [0, 4, 8, 12, 16], 1] = False
    torch.testing.assert_close(g[free].unique(), torch.tensor([0.0, 1 / 0.6]))
    assert (g[~free] == 1).all()
