"""The benchmarks still import and parse their flags (CI runs none of them; a moved function
would otherwise break them unseen). ``--help`` exits before any work is done."""
import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")
ENTRY = {"superkernel_recipes.py": "compare"}  # the function its __main__ calls


def load(path):
    """Import a benchmark as its command line does: its own folder first on sys.path."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_imports_and_shows_its_help(path, monkeypatch, capsys):
    module = load(path)
    monkeypatch.setattr(sys, "argv", [path.name, "--help"])
    with pytest.raises(SystemExit) as stop:
        getattr(module, ENTRY.get(path.name, "main"))()
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["gpu_check.sh", "cpu_commands.sh"])
def test_the_shell_scripts_parse(name):
    assert subprocess.run(["bash", "-n", str(BENCH / name)]).returncode == 0
