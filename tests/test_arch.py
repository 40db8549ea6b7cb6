import json
import random

import pytest

from spnas.arch import Arch, ArchError, SpaceSpec, arch_from_text_or_file
from spnas.spaces.spos import spos_space

SPACES = [spos_space(), spos_space(layout="imagenet"), spos_space(8, 2)]
MBCONV_LIKE = SpaceSpec("toy", "cifar", ("k3e3", "k5e6", "skip"),
                        ((0, 1),) + ((0, 1, 2),) * 3 + ((0, 1),) + ((0, 1, 2),), (4, 2), bars=True)


@pytest.mark.parametrize("space", SPACES + [MBCONV_LIKE], ids=lambda s: s.describe())
def test_round_trip_string_and_json(space, tmp_path):
    rng = random.Random(0)
    for _ in range(50):
        a = Arch.sample(space, rng)
        assert Arch.parse(str(a), space) == a
        assert Arch.from_json(json.loads(json.dumps(a.to_json()))) == a
    a.save(tmp_path / "a.json", found_by={"method": "test"}, metrics={"val_acc": 0.5})
    assert Arch.load(tmp_path / "a.json") == a
    assert arch_from_text_or_file(str(tmp_path / "a.json"), space) == a


def test_bars_at_stage_boundaries_only():
    a = Arch(MBCONV_LIKE, (0, 1, 2, 0, 1, 2))
    assert str(a) == "k3e3 k5e6 skip k3e3 | k5e6 skip"
    assert Arch.parse("k3e3 k5e6 skip k3e3 k5e6 skip", MBCONV_LIKE) == a
    with pytest.raises(ArchError, match="token 3: '\\|'"):
        Arch.parse("k3e3 k5e6 | skip k3e3 k5e6 skip", MBCONV_LIKE)


def test_the_old_recipe_best_arch_in_both_forms():
    space = spos_space()
    text = "k5 k3 x k5 x k3 x k3 k3 x x k3 k5 k3 k5 k7 k7 k5 k5 x"
    idx = "1,0,3,1,3,0,3,0,0,3,3,0,1,0,1,2,2,1,1,3"
    assert Arch.parse(text, space) == Arch.parse(idx, space)
    assert list(Arch.parse(idx, space)) == [int(i) for i in idx.split(",")]


@pytest.mark.parametrize("text, message", [
    ("k3 " * 19 + "k9", "token 20: unknown choice 'k9'"),
    ("k3 " * 19, "19 layers given"),
    ("k3 " * 21, "token 21: 'k3' is one too many"),
    ("", "empty"),
    ("1,0,7", r"token 3: '7' is not a choice index 0..3$"),
    ("k3,k5", r"'k3' is not a choice index 0..3; choice tokens are written with spaces \('k3 x"),
    ("0 " * 20, r"unknown choice '0'; expected one of k3 k5 k7 x; choice indices are written "
                r"with commas"),
])
def test_bad_strings_name_the_position(text, message):
    with pytest.raises(ArchError, match=message):
        Arch.parse(text, spos_space())


def test_disallowed_choice_is_refused():
    space = spos_space(4, num_choices=2)
    with pytest.raises(ArchError, match="token 2: layer 1 cannot be 'k7'"):
        Arch.parse("k3 k7 k3 k3", space)
    with pytest.raises(ArchError, match="token 1: layer 0 cannot be 'skip'"):
        Arch.parse("skip k3e3 k3e3 k3e3 k3e3 k3e3", MBCONV_LIKE)


@pytest.mark.parametrize("space", [spos_space(6, 3), MBCONV_LIKE], ids=lambda s: s.name)
def test_mutation_and_crossover_stay_valid(space):
    rng = random.Random(1)
    parents = [Arch.sample(space, rng) for _ in range(20)]
    for i in range(200):
        child = parents[i % 20].mutate(rng, 0.5) if i % 2 else \
            parents[i % 20].crossover(parents[(i + 7) % 20], rng)
        assert all(c in space.allowed[j] for j, c in enumerate(child))
        if i % 2 == 0:  # each gene comes from one parent
            p, q = parents[i % 20], parents[(i + 7) % 20]
            assert all(c in (p[j], q[j]) for j, c in enumerate(child))


def test_mutation_probability_zero_and_one():
    space, rng = spos_space(), random.Random(2)
    a = Arch.sample(space, rng)
    assert a.mutate(rng, 0.0) == a
    changed = sum(a.mutate(rng, 1.0) != a for _ in range(20))
    assert changed == 20  # 20 layers redrawn from 4 choices: all equal has prob 4^-20


def test_arch_file_of_another_space_is_refused(tmp_path):
    a = Arch.sample(spos_space(), random.Random(0))
    a.save(tmp_path / "a.json")
    with pytest.raises(ArchError, match="is for spos/cifar, 20 layers"):
        arch_from_text_or_file(str(tmp_path / "a.json"), spos_space(layout="imagenet"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArchError, match="cannot read arch file"):
        Arch.load(tmp_path / "bad.json")
