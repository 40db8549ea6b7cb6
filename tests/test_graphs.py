"""--cuda_graphs: everything around the capture, on the CPU.

Real CUDA graphs cannot run here; ``capture_eagerly`` runs the warm-up passes that
``torch.cuda.make_graphed_callables`` runs (which move BatchNorm statistics) and returns the
eager block, so these tests check which block is captured with which input, when a block
falls back to its eager forward, that capturing changes no statistic, and that a graphed
run's wiring computes exactly the eager run's numbers. ``benchmarks/check_graphs.py`` compares
real graphs with eager steps on a GPU.
"""
import copy

import pytest
import torch
from conftest import cli_argv
from test_finetune_export import busy_child, finetune_argv, save_child
from test_retrain import retrain_argv
from test_train import losses, train_argv

import spnas.engine.trainer as trainer_module
from spnas.cli import main
from spnas.engine.graphs import GraphedBlocks, capture_eagerly
from spnas.errors import SpnasError
from spnas.spaces.spos import SposSupernet, spos_space

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    """capture_eagerly, remembering what it was given."""

    def __init__(self):
        self.calls: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def __call__(self, module, sample_args, num_warmup_iters=3):
        self.calls.append((module.block, sample_args[0]))
        return capture_eagerly(module, sample_args, num_warmup_iters)


def supernet(seed=0):
    torch.manual_seed(seed)
    return SposSupernet(spos_space(layers=5), 10).train()


def bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_warm_up_moves_bn_statistics_so_the_restore_is_needed():
    model = supernet()
    block = model.layers[1][2]
    before = bn_stats(block)
    capture_eagerly(torch.nn.Sequential(block), (torch.randn(4, 64, 32, 32, requires_grad=True),))
    after = bn_stats(block)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_graphed_steps_compute_the_eager_steps_exactly():
    eager, graphed = supernet(), supernet()
    rec = Recorder()
    blocks = GraphedBlocks(amp=False, capture=rec)
    paths = [(0, 1, 2, 3, 0), (0, 2, 2, 1, 3), (0, 1, 2, 3, 0)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, graphed)]
    for step, arch in enumerate(paths):
        x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        y = torch.arange(6) % 10
        out_e = eager(x, arch)
        out_g = blocks.forward(graphed.stem, graphed.path_blocks(arch), graphed.head, x)
        assert torch.equal(out_e, out_g)
        for out, opt in zip((out_e, out_g), opts):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(),
                                                     graphed.state_dict().values()))
    # each block the paths use is captured once
    used = {graphed.layers[i][c] for arch in paths for i, c in enumerate(arch)}
    assert len(rec.calls) == len(used) == 8 and {b for b, _ in rec.calls} == used
    assert all(sample.requires_grad for _, sample in rec.calls)
    assert blocks.replays == 5 * len(paths)
    assert not any("_Call" in type(m).__name__ for m in graphed.modules())  # no wrapper in the model


def test_sample_inputs_are_the_real_inputs_copied():
    model = supernet()
    rec = Recorder()
    blocks = GraphedBlocks(amp=False, capture=rec)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
             for b in model.path_blocks((0, 0, 0, 0, 0))]
    model(x, (0, 0, 0, 0, 0))
    for h in hooks:
        h.remove()
    blocks.forward(model.stem, model.path_blocks((0, 0, 0, 0, 0)), model.head, x)
    assert len(rec.calls) == 5
    for (_, sample), real in zip(rec.calls, inputs):
        assert sample.shape == real.shape and sample.stride() == real.stride()


def test_blocks_fall_back_to_eager_where_a_graph_would_be_wrong():
    model = supernet()
    rec = Recorder()
    blocks = GraphedBlocks(amp=False, capture=rec)
    arch = (0, 1, 2, 3, 0)
    path = model.path_blocks(arch)
    blocks.forward(model.stem, path, model.head, torch.randn(6, 3, 32, 32))
    assert len(rec.calls) == 5 and blocks.replays == 5
    # a smaller last batch: eager, nothing captured again, and the eager numbers
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(blocks.forward(model.stem, path, model.head, x), model(x, arch))
    assert len(rec.calls) == 5 and blocks.replays == 5
    with torch.no_grad():  # validation and BN recalibration run without gradients
        blocks.forward(model.stem, path, model.head, torch.randn(6, 3, 32, 32))
    model.eval()
    blocks.forward(model.stem, path, model.head, torch.randn(6, 3, 32, 32))
    assert len(rec.calls) == 5 and blocks.replays == 5
    model.train()
    blocks.forward(model.stem, path, model.head, torch.randn(6, 3, 32, 32))
    assert blocks.replays == 10


def test_a_graph_is_replayed_only_in_the_modes_it_was_captured_in():
    """A module's mode or a parameter's requires_grad changed since the capture (a fine-tune's
    frozen BNs), a block without trainable parameters (a skip) and a block met again in
    the same path run eagerly: their graph would compute something else, or overwrite the
    first call's outputs."""
    model = supernet()
    rec = Recorder()
    blocks = GraphedBlocks(amp=False, capture=rec)
    arch = (0, 1, 2, 3, 0)
    path = model.path_blocks(arch)
    x = torch.randn(6, 3, 32, 32)
    blocks.forward(model.stem, path, model.head, x)
    assert (len(rec.calls), blocks.replays) == (5, 5)
    bn = next(m for m in path[1].modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.eval()  # one BN of one block, as BackboneFreeze leaves them while frozen
    assert torch.equal(blocks.forward(model.stem, path, model.head, x), model(x, arch))
    assert blocks.replays == 9 and len(rec.calls) == 5
    bn.train()
    next(path[2].parameters()).requires_grad_(False)
    blocks.forward(model.stem, path, model.head, x)
    assert blocks.replays == 13
    next(path[2].parameters()).requires_grad_(True)
    skip = torch.nn.Identity()
    twice = [path[0], skip, path[1], path[1]]  # path[1] keeps its channels: it can repeat
    blocks.forward(model.stem, twice, lambda h: h, x)
    assert blocks.replays == 15 and len(rec.calls) == 5  # path[0] and the first path[1]
    next(path[3].children()).register_forward_hook(lambda *a: None)  # on a part of a block
    fresh = GraphedBlocks(amp=False, capture=rec)
    with pytest.raises(SpnasError, match=r"--cuda_graphs: .* has a hook, which a graph's "
                                         "replays would not run"):
        fresh.forward(model.stem, path, model.head, x)


def test_capture_leaves_every_bn_statistic_as_it_was():
    model = supernet()
    reference = copy.deepcopy(model)
    blocks = GraphedBlocks(amp=False, capture=Recorder())
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():  # the stem's BN, then each block's, moves once, as in one eager step
        reference(x, (3, 3, 3, 3, 3))
    blocks.forward(model.stem, model.path_blocks((3, 3, 3, 3, 3)), model.head, x)
    after, want = bn_stats(model), bn_stats(reference)
    assert all(torch.equal(after[k], want[k]) for k in want)


def test_real_capture_refuses_hooked_modules_as_the_stand_in_does():
    block = supernet().layers[0][0]
    block_hooked = torch.nn.Sequential(block)
    block_hooked.register_forward_hook(lambda *a: None)
    with pytest.raises(RuntimeError, match="hooks"):
        capture_eagerly(block_hooked, (torch.randn(2, 16, 32, 32, requires_grad=True),))


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    """--cuda_graphs allowed on the CPU, with the stand-in capture; returns its recorder."""
    rec = Recorder()
    monkeypatch.setattr(trainer_module, "check_graphs_allowed", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", rec)
    return rec


def test_a_graphed_supernet_run_equals_the_eager_run(fake_cifar, tmp_path, graphs_on_cpu):
    assert main(train_argv(fake_cifar, tmp_path, "eager", **{"--epochs": 2})) == 0
    assert main(train_argv(fake_cifar, tmp_path, "graphs", **{"--epochs": 2,
                                                                "--cuda_graphs": None})) == 0
    assert graphs_on_cpu.calls  # the run captured its blocks
    assert losses(tmp_path / "graphs") == losses(tmp_path / "eager")
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "graphs" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_eager_run_resumed_with_graphs_continues_the_same_curve(fake_cifar, tmp_path,
                                                                   graphs_on_cpu):
    flags = {"--epochs": 3, "--val_interval": 5}
    assert main(train_argv(fake_cifar, tmp_path, "full", **flags)) == 0
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags, **{"--stop_after": 4})) == 0
    assert not graphs_on_cpu.calls
    assert main(train_argv(fake_cifar, tmp_path, "part", **flags,
                           **{"--resume": None, "--cuda_graphs": None})) == 0
    assert graphs_on_cpu.calls  # captured after the checkpoint's weights were loaded
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    log = (tmp_path / "part" / "train.log").read_text()
    assert "--cuda_graphs differs from the run's --no-cuda_graphs" in log


def test_a_graphed_retrain_equals_the_eager_one(fake_cifar, tmp_path, graphs_on_cpu):
    data = fake_cifar.parent
    assert main(retrain_argv(data, tmp_path, "eager", **{"--data_path": fake_cifar})) == 0
    assert main(retrain_argv(data, tmp_path, "graphs", **{"--data_path": fake_cifar,
                                                          "--cuda_graphs": None})) == 0
    assert len(graphs_on_cpu.calls) == 4  # the 4 layers of the network
    assert losses(tmp_path / "graphs") == losses(tmp_path / "eager")


def test_a_graphed_finetune_with_a_frozen_start_equals_the_eager_one(fake_cifar, tmp_path,
                                                                     graphs_on_cpu):
    """Frozen (epoch 1): no gradient reaches the blocks and their BNs are in eval mode, so
    they run eagerly; unfrozen (epoch 2): from their graphs."""
    ckpt = save_child(tmp_path / "src.pt", busy_child(num_classes=5), fake_cifar)
    flags = {"--epochs": 2, "--freeze_epochs": 1}
    assert main(finetune_argv(fake_cifar, ckpt, tmp_path, "eager", **flags)) == 0
    assert main(finetune_argv(fake_cifar, ckpt, tmp_path, "graphs", **flags,
                              **{"--cuda_graphs": None})) == 0
    assert len(graphs_on_cpu.calls) == 4
    assert losses(tmp_path / "graphs") == losses(tmp_path / "eager")
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "graphs" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_capture_stops_the_run_in_one_line_and_keeps_the_checkpoint(
        fake_cifar, tmp_path, monkeypatch, capsys):
    flags = {"--epochs": 3, "--val_interval": 5}
    assert main(train_argv(fake_cifar, tmp_path, "run", **flags, **{"--stop_after": 3})) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def refuse(module, sample_args, num_warmup_iters=3):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
    monkeypatch.setattr(trainer_module, "check_graphs_allowed", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refuse)
    assert main(train_argv(fake_cifar, tmp_path, "run", **flags,
                           **{"--resume": None, "--cuda_graphs": None})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spnas: error: --cuda_graphs: capturing a ShuffleUnit")
    assert "operation not permitted" in err[-1] and "drop --cuda_graphs" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


@pytest.mark.parametrize("command, argv, message", [
    ("train", lambda d, s: train_argv(d, s, "x", **{"--cuda_graphs": None}),
     "--cuda_graphs needs a CUDA device, this run's is cpu"),
    ("superkernel", lambda d, s: cli_argv("superkernel", {
        "--data_path": d, "--save_path": s, "--exp_name": "x", "--no-download": None,
        "--cuda_graphs": None}), "--cuda_graphs is for supernet training, retraining"),
])
def test_cuda_graphs_where_they_cannot_run_is_a_one_line_error(fake_cifar, tmp_path, capsys,
                                                               command, argv, message):
    assert main(argv(fake_cifar, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before the run folder is made
