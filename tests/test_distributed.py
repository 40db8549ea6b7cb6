"""Multi-process training through torchrun (gloo on the CPU): gradients are averaged in sync."""
import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT
from test_train import train_argv

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    import spnas.engine.trainer as T
    from spnas.cli import main
    fit = T.Trainer.fit
    def fit_and_dump(self):
        out = fit(self)
        torch.save(self.task.model.state_dict(), sys.argv[1] + f"/rank{os.environ['RANK']}.pt")
        return out
    T.Trainer.fit = fit_and_dump
    sys.exit(main(sys.argv[2:]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` on the CPU, one thread a process; ``env`` added."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", **env})


@pytest.mark.slow
def test_two_processes_stay_in_sync(fake_cifar, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    argv = train_argv(fake_cifar, tmp_path, "ddp", **{"--batch_size": 8, "--epochs": 1,
                                                      "--layers": 2, "--num_choices": 2})
    r = _torchrun(script, tmp_path, *argv)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    params = [k for k in w0 if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(w0[k], w1[k]) for k in params)  # averaged gradients, same updates
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len([x for x in lines if '"train"' in x]) == 3  # one writer, not one per rank
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3


CTRL_C = textwrap.dedent("""
    import os, signal, sys, time
    from spnas.cli import main
    from spnas.data.loading import DeviceLoader
    batch, at = DeviceLoader.batch, int(sys.argv[1])
    def ctrl_c_at(self, epoch, i):  # at step index `at` rank 0 presses Ctrl-C at torchrun
        if epoch * self.steps_per_epoch + i == at and os.environ["RANK"] == "0":
            os.kill(os.getppid(), signal.SIGINT)
            t0 = time.time()  # until torchrun passes it on to this process (and rank 1)
            stop = signal.getsignal(signal.SIGINT).__self__  # spnas's StopSignals
            while not stop.signum:
                assert time.time() - t0 < 20, "no SIGINT came from torchrun"
                time.sleep(0.01)
        return batch(self, epoch, i)
    DeviceLoader.batch = ctrl_c_at
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("print_freq, val_interval, stop", [
    (4, 5, 8),  # last.pt written at the stop
    (4, 1, 6),  # at the validation after step 6 (no log line): it wrote last.pt (on rank 0)
])
def test_a_ctrl_c_under_torchrun_stops_every_process_at_one_step_and_resumes_the_curve(
        fake_cifar, tmp_path, print_freq, val_interval, stop):
    """torchrun passes a Ctrl-C on to every process, each at its own step; they agree on the
    next log line's step, write last.pt there, and a resumed run equals an uninterrupted one."""
    from test_train import losses
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    flags = {"--batch_size": 8, "--epochs": 2, "--num_steps": 6, "--layers": 2,
             "--num_choices": 2, "--print_freq": print_freq, "--val_interval": val_interval}
    # torchrun would kill at once after a signal: its log lines are too far apart to stop in time
    r = _torchrun("-m", "spnas", *train_argv(fake_cifar, tmp_path, "full", **flags),
                  TORCH_ELASTIC_SHUTDOWN_TIMEOUT="0")
    assert r.returncode == 0, r.stderr[-3000:]
    most = min(print_freq, val_interval * 6)  # 6 steps per epoch
    assert r.stderr.count("note: under torchrun a Ctrl-C or SIGTERM (or SIGHUP) stops the "
                          "processes at the next log line, validation or checkpoint, up to "
                          f"{most} steps") == 1, r.stderr[-3000:]
    r = _torchrun(script, 4, *train_argv(fake_cifar, tmp_path, "part", **flags))
    part = tmp_path / "part"
    assert "note: under torchrun" not in r.stderr, r.stderr[-3000:]  # they stop in time
    assert r.returncode != 0 and r.stderr.count("spnas: interrupted") == 2, r.stderr[-3000:]
    assert ("Ctrl-C: every process finishes its steps up to the next log line (one every "
            f"--print_freq {print_freq} steps), validation or checkpoint, then last.pt is "
            "written\n") in r.stderr, r.stderr[-3000:]
    assert (f"interrupted after step {stop} of 12; {part}/last.pt holds step {stop}: "
            "--resume") in r.stderr, r.stderr[-3000:]
    assert torch.load(part / "last.pt", weights_only=True)["step"] == stop
    r = _torchrun("-m", "spnas", *train_argv(fake_cifar, tmp_path, "part", **flags,
                                             **{"--resume": None}))
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(part) == losses(tmp_path / "full") and len(losses(part)) == 12 // print_freq, (
        losses(part), losses(tmp_path / "full"), (part / "train.log").read_text()[-3000:])
    full_w = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    part_w = torch.load(part / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


NAN_ON_RANK_1 = textwrap.dedent("""
    import os, sys, torch
    from spnas.cli import main
    from spnas.data.loading import DeviceLoader
    batch, at = DeviceLoader.batch, int(sys.argv[1])
    def nan_at(self, epoch, i):  # rank 1's images at step index `at` are NaN: its loss is
        images, labels = batch(self, epoch, i)
        if epoch * self.steps_per_epoch + i == at and os.environ["RANK"] == "1":
            images = torch.full_like(images, float("nan"))
        return images, labels
    DeviceLoader.batch = nan_at
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_a_nan_loss_on_one_process_stops_every_process_at_its_step(fake_cifar, tmp_path):
    """Rank 0's loss at that step is finite (its NaN comes a step later, through the averaged
    gradients): without agreeing, rank 1 stopped at the log line while rank 0 went on into the
    next collective, alone."""
    script = tmp_path / "nan.py"
    script.write_text(NAN_ON_RANK_1)
    flags = {"--batch_size": 8, "--epochs": 1, "--num_steps": 6, "--layers": 2,
             "--num_choices": 2, "--print_freq": 2, "--val_interval": 5}
    r = _torchrun(script, 1, *train_argv(fake_cifar, tmp_path, "nan", **flags))
    assert r.returncode != 0
    said = "spnas: error: the loss became NaN or infinite at step 2 (epoch 0); training stopped"
    assert r.stderr.count(said) == 2, r.stderr[-3000:]


@pytest.mark.slow
def test_search_split_over_two_processes_finds_what_one_process_finds(fake_cifar, tmp_path):
    from test_search_run import records, search_argv

    from spnas.cli import main
    from spnas.runtime import torch_threads
    assert main(train_argv(fake_cifar, tmp_path, "sn", **{"--epochs": 1, "--num_steps": 2})) == 0
    with torch_threads(1):  # as each torchrun process below: float sums depend on the count
        assert main(search_argv(tmp_path / "sn", tmp_path / "one")) == 0
    r = _torchrun("-m", "spnas", *search_argv(tmp_path / "sn", tmp_path / "two",
                                              **{"--device": "cpu"}))
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(one) == 12 and two == one  # every candidate, score and cost, in the same order
    best = [(tmp_path / run / "best_arch.json").read_text() for run in ("one", "two")]
    assert best[0] == best[1]
    assert ", 2 processes" in (tmp_path / "two" / "search.log").read_text()


@pytest.mark.slow
def test_pipeline_under_torchrun_runs_every_stage_once(fake_cifar, tmp_path):
    from test_pipeline import TINY
    out = tmp_path / "pipe"
    r = _torchrun("-m", "spnas", "pipeline", "--config", ROOT / "recipes" / "smoke.yaml",
                  "--out", out, "--data_path", fake_cifar, "--device", "cpu", *TINY, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("pipeline done: report in") == 1  # rank 0's
    for stage in ("supernet", "search", "retrain", "evaluate", "export"):
        assert (out / stage / "done.json").is_file(), stage
        assert r.stdout.count(f"pipeline: {stage} -> ") == 1, stage
    best = json.loads((out / "search" / "best_arch.json").read_text())
    results = json.loads((out / "retrain" / "results.json").read_text())
    assert results["arch"] == best["arch"] and "test_acc" in json.dumps(results)
    assert ", 2 processes" in (out / "search" / "search.log").read_text()
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_a_command_tears_down_its_process_group(tmp_path):
    """Left to the interpreter's exit, a gloo group's threads can abort the process after its
    work is done (seen once under load), so every command destroys its group."""
    import torch.distributed as dist

    from spnas.cli import run_guarded
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    assert run_guarded(lambda args: 0, None) == 0
    assert not dist.is_initialized()
