import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.autoaugment import _apply_op

from spnas.data.augment import (
    AugmentConfig,
    BatchAutoAugment,
    BatchTransform,
    crop_resize,
    cutout,
    random_crop_flip,
    resized_crop_params,
)


def _images(n=64, h=32, seed=0):
    return torch.randint(0, 256, (n, 3, h, h), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_crop_and_flip_are_drawn_per_sample():
    x = _images()
    out = random_crop_flip(x, 4, True, torch.Generator().manual_seed(1))
    padded = F.pad(x, (4, 4, 4, 4))
    found = []
    for b in range(len(x)):
        matches = [(dy, dx, fl) for dy in range(9) for dx in range(9) for fl in (False, True)
                   if torch.equal(out[b], (lambda c: c.flip(2) if fl else c)(
                       padded[b, :, dy:dy + 32, dx:dx + 32]))]
        assert len(matches) == 1, b  # every sample is exactly one crop of its own image
        found.append(matches[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 20
    flips = sum(fl for _, _, fl in found)
    assert 16 < flips < 48


def test_cutout_zeroes_one_square_per_sample():
    x = torch.ones(64, 3, 32, 32)
    out = cutout(x, 16, torch.Generator().manual_seed(2))
    centres = set()
    for b in range(64):
        zero = (out[b] == 0).all(0)
        assert ((out[b] == 0) == zero).all()  # same hole in every channel
        ys, xs = torch.nonzero(zero, as_tuple=True)
        assert len(ys) > 0 and len(ys) <= 256
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert len(ys) == h * w  # one rectangle, clipped at the border
        if 0 < ys.min() and ys.max() < 31 and 0 < xs.min() and xs.max() < 31:
            assert h == w == 16
        centres.add((int(ys.min()), int(xs.min())))
        assert (out[b][:, ~zero] == 1).all()
    assert len(centres) > 30


def test_batched_autoaugment_equals_torchvision_per_sample():
    aa = BatchAutoAugment()
    x = _images(128, seed=3)
    pid, applied, negated = aa.draws(len(x), torch.Generator().manual_seed(4))
    batched = aa.apply(x, pid, applied, negated)
    space = aa._policy._augmentation_space(10, (32, 32))
    for b in range(len(x)):
        img = x[b]
        for i, (name, _, mag_id) in enumerate(aa.policies[int(pid[b])]):
            if applied[b, i]:
                mags, signed = space[name]
                mag = float(mags[mag_id]) if mag_id is not None else 0.0
                if signed and negated[b, i]:
                    mag = -mag
                img = _apply_op(img, name, mag, interpolation=aa._policy.interpolation, fill=None)
        assert torch.equal(batched[b], img), b
    assert len(set(pid.tolist())) > 15 and 0 < applied.float().mean() < 1


def test_autoaugment_draws_follow_the_policy_probabilities():
    aa = BatchAutoAugment()
    pid, applied, _ = aa.draws(20000, torch.Generator().manual_seed(5))
    for k in (0, 10, 24):
        sel = pid == k
        for i in range(2):
            p = aa.policies[k][i][1]
            assert abs(applied[sel, i].float().mean().item() - p) < 0.06


def test_resized_crop_boxes_are_valid_and_varied():
    top, left, h, w = resized_crop_params(1000, 32, 32, torch.Generator().manual_seed(6))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() > 0.6 and ratio.max() < 1.6  # 3/4 .. 4/3 up to rounding
    assert len(set(zip(top.tolist(), left.tolist()))) > 100


def test_crop_resize_identity_and_flip():
    x = torch.rand(4, 3, 32, 32)
    box = (torch.zeros(4), torch.zeros(4), torch.full((4,), 32.0), torch.full((4,), 32.0))
    torch.testing.assert_close(crop_resize(x, box, 32), x, atol=1e-5, rtol=0)
    flip = torch.tensor([True, False, True, False])
    out = crop_resize(x, box, 32, flip)
    torch.testing.assert_close(out[0], x[0].flip(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-5, rtol=0)
    half = (torch.zeros(4), torch.zeros(4), torch.full((4,), 16.0), torch.full((4,), 16.0))
    up = crop_resize(x, half, 32)  # the top-left quarter, upsampled 2x
    torch.testing.assert_close(up[:, :, ::2, ::2][:, :, 1:-1, 1:-1].mean(), x[:, :, :16, :16].mean(),
                               atol=0.02, rtol=0)


@pytest.mark.parametrize("cfg", [AugmentConfig(), AugmentConfig(cutout=16, auto_aug=True),
                                 AugmentConfig(cutout=16, auto_aug=True, resize=64)])
def test_transform_is_seeded_and_shapes_are_right(cfg):
    t = BatchTransform(cfg, memory_format=torch.channels_last)
    x = _images(16)
    a = t.train(x, torch.Generator().manual_seed(7))
    b = t.train(x, torch.Generator().manual_seed(7))
    c = t.train(x, torch.Generator().manual_seed(8))
    size = cfg.resize or 32
    assert a.shape == (16, 3, size, size) and a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and not torch.equal(a, c)
    ev = t.plain(x)
    assert ev.shape == (16, 3, size, size)
    if not cfg.resize:  # evaluation only normalises
        mean = torch.tensor([0.49139968, 0.48215827, 0.44653124]).view(1, 3, 1, 1)
        std = torch.tensor([0.24703233, 0.24348505, 0.26158768]).view(1, 3, 1, 1)
        torch.testing.assert_close(ev, (x.float() / 255 - mean) / std)


def test_batched_equalize_equals_torchvision_per_image():
    from torchvision.transforms.functional import equalize as tv_equalize

    from spnas.data.augment import equalize
    x = _images(32, seed=7)
    x[0] = 77                                   # constant: step 0, unchanged
    x[1] = torch.where(x[1] > 128, 200, 10)     # two values
    x[2, 0] = torch.arange(32).repeat(32, 1)    # 32 values, each 32 times
    x[3] = x[3] // 64                           # dark, four values
    out = equalize(x)
    for b in range(len(x)):
        assert torch.equal(out[b], tv_equalize(x[b])), b
    assert torch.equal(out[0], x[0]) and not torch.equal(out[3], x[3])
