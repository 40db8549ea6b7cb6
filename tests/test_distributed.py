"""Multi-process training through torchrun (gloo on the CPU): gradients are averaged in sync."""
import socket
import subprocess
import sys
import textwrap

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


def test_two_processes_stay_in_sync(fake_cifar, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    argv = train_argv(fake_cifar, tmp_path, "ddp", **{"--batch_size": 8, "--epochs": 1,
                                                      "--layers": 2, "--num_choices": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script),
           str(tmp_path)] + argv
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    params = [k for k in w0 if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(w0[k], w1[k]) for k in params)  # averaged gradients, same updates
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len([x for x in lines if '"train"' in x]) == 3  # one writer, not one per rank
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3
