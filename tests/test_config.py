"""One set of defaults: the stage dataclasses, their generated flags, --config files and resume.

Every command's parsed defaults are its stage dataclass's; a bad value is the same
one-line error from Python as from the flag; ``--config FILE`` (YAML, JSON, a run
folder's config.json) sets settings under the flags given; ``--resume`` takes the
run's config.json back and refuses a changed setting outside ``resume.RESUMABLE``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import pytest
import torch
from conftest import ROOT, write_official
from test_train import train_argv

from spnas import config as C
from spnas import defaults as D
from spnas.cli import build_parser, main
from spnas.cli.generate import config_from_args, read_recipe
from spnas.cli.superkernel import superkernel_config
from spnas.errors import SpnasError
from spnas.fields import leaf_fields, to_flat

STAGES = {"train": D.SupernetStage, "retrain": D.RetrainStage, "finetune": D.FinetuneStage,
          "superkernel": D.SuperkernelStage, "search": C.SearchRunConfig,
          "latency-table": C.LatencyConfig, "evaluate": C.EvaluateConfig,
          "export": C.ExportConfig, "profile": C.ProfileConfig, "curves": C.CurvesConfig,
          "import-reference": C.ImportReferenceConfig}


def parse(command: str, *argv):
    return build_parser().parse_args([command, *map(str, argv)])


def config_of(command: str, *argv):
    """The config ``spnas COMMAND ARGV`` runs with (nothing is run)."""
    args = parse(command, *argv)
    if command == "superkernel":
        return superkernel_config(args)
    return config_from_args(STAGES[command](), args)


# ---- one set of defaults ------------------------------------------------------------------
@pytest.mark.parametrize("command", STAGES)
def test_parsed_defaults_are_the_stage_dataclass_defaults(command):
    default, args = STAGES[command](), parse(command)
    for path, f, _, value in leaf_fields(default):
        if f.metadata.get("cli") is not False:
            assert getattr(args, f.name) == value, (command, ".".join(path))
    assert to_flat(config_of(command)) == to_flat(default)


SEED_COMMAND = (
    "--exp_name spos_c10_train_supernet --layers 20 --num_choices 4 --batch_size 64 --epochs 600 "
    "--num_steps 100 --lr 0.025 --momentum 0.9 --weight-decay 0.0003 --print_freq 100 "
    "--val_interval 5 --save_path ./checkpoints/ --seed 0 --data_path data/teco-data/ --classes 10 "
    "--dataset cifar10 --cutout --cutout_length 16 --auto_aug --resize")


def test_the_seed_parser_has_the_supernet_stage_defaults():
    sys.path.insert(0, str(ROOT / "run_scripts"))
    try:
        from argument import parse_args
    finally:
        sys.path.remove(str(ROOT / "run_scripts"))
    args = parse_args([])
    assert {k: getattr(args, k) for k in to_flat(D.SupernetStage())} == to_flat(D.SupernetStage())
    seed = parse_args(SEED_COMMAND.split())  # the README's, verbatim
    cfg = config_from_args(D.SupernetStage(), seed)
    assert (cfg.optim.weight_decay, cfg.data.cutout, cfg.data.auto_aug, cfg.data.resize) == \
        (3e-4, True, True, True)
    assert (cfg.optim.num_steps, cfg.data.data_path, cfg.run.exp_name) == \
        (100, "data/teco-data/", "spos_c10_train_supernet")


@pytest.mark.parametrize("command", STAGES)
def test_setting_names_are_unique_within_a_stage(command):
    names = [path[-1] for path, *_ in leaf_fields(STAGES[command]())]
    assert len(names) == len(set(names))


def test_help_states_every_default_and_unit():
    sub = build_parser()._subparsers._group_actions[0].choices
    for command, stage in STAGES.items():
        text = " ".join(sub[command].format_help().split())
        helps = {a.dest: a.help for a in sub[command]._actions}
        for _, f, _, value in leaf_fields(stage()):
            if f.metadata.get("cli") is not False:
                shown = f.metadata["metavar"] if f.metadata.get("positional") else f"--{f.name}"
                assert shown in text, (command, f.name)
                assert "(default: " in helps[f.name] or "(required)" in helps[f.name], \
                    (command, f.name)
    retrain = " ".join(sub["retrain"].format_help().split())
    assert "peak learning rate [per step of batch_size images, or of lr_batch] (default: 0.1)" \
        in retrain and "(default: 128)" in retrain and "side of the cutout square [pixels]" in retrain
    paper = " ".join(sub["superkernel"].format_help().split())
    assert "(default: 0.1; --recipe paper: 0.02)" in paper
    search = " ".join(sub["search"].format_help().split())
    assert "--resize, --no-resize train at 224" in search and "(default: the checkpoint's)" in search


def test_config_choices_match_the_registries():
    from spnas.data.datasets import DATASETS
    from spnas.spaces import SPACE_SPECS
    assert C.DATASETS == DATASETS
    assert set(dataclasses.fields(C.LatencyConfig)[1].metadata["choices"]) == set(SPACE_SPECS)
    from spnas.stages.export import EXPORTERS  # --format's choices: export no longer checks them
    formats = {f.name: f for f in dataclasses.fields(C.ExportConfig)}["format"].metadata["choices"]
    assert set(formats) == set(EXPORTERS)


# ---- checks: the same one-line error from Python and from the flag --------------------------
BAD = [
    (lambda: C.OptimConfig(batch_size=0), ["train", "--batch_size", "0"],
     "--batch_size must be positive, got 0"),
    (lambda: C.SearchConfig(mutation_prob=5), ["search", "--mutation_prob", "5"],
     "--mutation_prob must be within 0..1, got 5.0"),
    (lambda: C.OptimConfig(lr=float("nan")), ["retrain", "--lr", "nan"],
     "--lr must be a finite number, got nan"),
    (lambda: C.OptimConfig(momentum=1.0), ["finetune", "--momentum", "1"],
     "--momentum must be in [0, 1), got 1.0"),
    (lambda: C.RunConfig(exp_name="../x"), ["train", "--exp_name", "../x"],
     "--exp_name '../x' must be a plain folder name"),
    (lambda: C.SuperkernelConfig(keep_prob=0.0), ["superkernel", "--keep_prob", "0"],
     "--keep_prob must be in (0, 1], got 0.0"),
    (lambda: C.SuperkernelConfig(target_latency=5.0), ["superkernel", "--target_latency_ms", "5"],
     "--target_latency_ms needs a table in ms"),
    (lambda: C.SearchConfig(max_latency_ms=3.0), ["search", "--max_latency_ms", "3"],
     "--max_latency_ms needs --latency_table FILE"),
    (lambda: C.ScoringConfig(cache_gb=-1.0), ["search", "--cache_gb", "-1"],
     "--cache_gb must be 0 or more, got -1.0"),
    (lambda: D.FinetuneStage(model=C.FinetuneConfig(freeze_epochs=31)),
     ["finetune", "--freeze_epochs", "31"], "--freeze_epochs must be 0..30 (--epochs), got 31"),
    (lambda: C.RetrainConfig(dropout=1.0), ["retrain", "--dropout", "1"],
     "--dropout must be in [0, 1), got 1.0"),
    (lambda: C.LatencyConfig(calibrate=-1), ["latency-table", "--calibrate", "-1"],
     "--calibrate must be 0 or more, got -1"),
    (lambda: C.EvaluateConfig(checkpoint="x", batch_size=0),
     ["evaluate", "--checkpoint", "x", "--batch_size", "0"], "--batch_size must be positive, got 0"),
    (lambda: C.ExportConfig(checkpoint="x", check_images=-1),
     ["export", "--checkpoint", "x", "--check_images", "-1"], "--check_images must be 0 or more"),
    (lambda: C.ExportConfig(checkpoint="x", tolerance=float("inf")),
     ["export", "--checkpoint", "x", "--tolerance", "inf"], "--tolerance must be a finite number"),
    (lambda: C.ProfileConfig(arch="x", warmup=-1), ["profile", "--arch", "x", "--warmup", "-1"],
     "--warmup must be 0 or more, got -1"),
    (lambda: C.ProfileConfig(arch="x", resolution=0), ["profile", "--arch", "x", "--resolution", "0"],
     "--resolution must be positive, got 0"),
    (lambda: C.CurvesConfig(runs=("a",), rtol=-1.0), ["curves", "a", "--rtol", "-1"],
     "--rtol must be 0 or more, got -1.0"),
    (lambda: C.CurvesConfig(runs=("a",), min_overlap=2.0), ["curves", "a", "--min_overlap", "2"],
     "--min_overlap must be within 0..1, got 2.0"),
    (lambda: C.ImportReferenceConfig(src="a", num_choices=0),
     ["import-reference", "a", "--num_choices", "0"], "--num_choices must be 1..4"),
    (lambda: C.LatencyConfig(options={"layers": 2}, checkpoint="x.pt"),
     ["latency-table", "--option", "layers=2", "--checkpoint", "x.pt"],
     "--option and --checkpoint do not mix"),
]


@pytest.mark.parametrize("build, argv, message", BAD, ids=[b[1][1] for b in BAD])
def test_a_bad_value_is_the_same_error_from_python_and_from_the_flag(build, argv, message, capsys):
    with pytest.raises(SpnasError) as e:
        build()
    assert message in str(e.value) and "\n" not in str(e.value)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"spnas: error: {e.value}"


def test_python_values_of_the_wrong_type_are_refused():
    with pytest.raises(SpnasError, match="--lr must be a number, got '0.1'"):
        C.OptimConfig(lr="0.1")
    with pytest.raises(SpnasError, match="--cutout must be true or false, got 1"):
        C.DataConfig(cutout=1)
    with pytest.raises(SpnasError, match="--dataset must be one of cifar10, cifar100, folder"):
        C.DataConfig(dataset="imagenet")
    assert C.OptimConfig(lr=1).lr == 1.0 and isinstance(C.OptimConfig(lr=1).lr, float)
    assert C.SearchRunConfig(data={"resize": True}).data.resize is True


# ---- --config FILE -------------------------------------------------------------------------
def test_config_files_set_settings_and_explicit_flags_win(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "r.yaml").write_text("lr: 3e-4  # YAML reads this as text; coerced\n"
                                     "cutout: true\nepochs: 7\nweight-decay: 0\n")
    (tmp_path / "r.json").write_text(json.dumps(
        {"optim": {"lr": 0.0003, "epochs": 7, "weight_decay": 0}, "data": {"cutout": True}}))
    for name in ("r.yaml", "r.json"):
        cfg = config_of("retrain", "--config", tmp_path / name)
        assert (cfg.optim.lr, cfg.optim.epochs, cfg.data.cutout) == (3e-4, 7, True)
        assert cfg.optim.weight_decay == 0.0 and cfg.optim.batch_size == 128  # the rest: defaults
        cfg = config_of("retrain", "--config", tmp_path / name, "--epochs", "9", "--no-cutout")
        assert (cfg.optim.lr, cfg.optim.epochs, cfg.data.cutout) == (3e-4, 9, False)
    (tmp_path / "q.yaml").write_text("cutout: 'true'\nauto_aug: 'False'\n")  # quoted: text
    cfg = config_of("retrain", "--config", tmp_path / "q.yaml")
    assert (cfg.data.cutout, cfg.data.auto_aug) == (True, False)
    (tmp_path / "s.yaml").write_text("max_flops: 80M\nmethod: random\nresize: true\n")
    cfg = config_of("search", "--config", tmp_path / "s.yaml")
    assert (cfg.search.max_flops, cfg.search.method, cfg.data.resize) == (80e6, "random", True)


@pytest.mark.parametrize("text, message", [
    ("lr: 0.1\nlearning_rate: 0.1\n", "no setting named learning_rate for 'spnas retrain'"),
    ("optim: {lr: abc}\n", "setting lr must be a number, got 'abc'"),
    ("batch_size: 0\n", "--batch_size must be positive, got 0"),
    ("- lr\n", "must hold a mapping of settings, not list"),
    ("lr: [\n", "is not valid YAML"),
    ("model_type: SupernetConfig\nlr: 0.1\n", "holds the settings of a SupernetConfig run"),
    ("optim:\n  lr: 0.05\nlr: 0.07\n", "sets lr twice (optim.lr and lr); keep one of them"),
    ("weight_decay: 0\noptim: {weight-decay: 1}\n", "sets weight_decay twice (weight_decay and "
                                                   "optim.weight-decay)"),
    ("cutout: 'maybe'\n", "setting cutout must be true or false, got 'maybe'"),
    ("data:\n  lr: 0.07\n", "data.lr is not a data setting; write lr in its optim section or "
                            "at the top level"),
    ("run:\n  arch: x\n", "run.arch is not a run setting; write arch in its model section"),
    ("1: 3\n", "1 is not a setting's name (YAML reads an unquoted 1 as int)"),
    ("optim:\n  null: 3\n", "None is not a setting's name"),
    ("lr: 0.1\nepochs: 2\nlr: 0.2\n", "'lr' is given twice in one mapping (line 3)"),
    ("optim: {lr: 0.1, lr: 0.2}\n", "'lr' is given twice in one mapping (line 1)"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, text, message):
    pytest.importorskip("yaml")
    (tmp_path / "bad.yaml").write_text(text)
    assert main(["retrain", "--config", str(tmp_path / "bad.yaml"), "--arch", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_json_key_given_twice_is_refused_and_a_yaml_merge_may_be_overridden(tmp_path, capsys):
    (tmp_path / "twice.json").write_text('{"optim": {"lr": 0.1, "lr": 0.2}}')
    assert main(["retrain", "--config", str(tmp_path / "twice.json"), "--arch", "x"]) == 2
    assert "'lr' is given twice in one mapping" in capsys.readouterr().err
    pytest.importorskip("yaml")
    (tmp_path / "merge.yaml").write_text("base: &b {lr: 0.1, epochs: 2}\nrun: {<<: *b, lr: 0.3}\n")
    assert read_recipe(tmp_path / "merge.yaml")["run"] == {"lr": 0.3, "epochs": 2}


def test_the_superkernel_order_is_defaults_recipe_file_flags(tmp_path):
    (tmp_path / "lam.json").write_text('{"lam": 0.5, "init": "spnas"}')
    cfg = config_of("superkernel", "--recipe", "paper", "--config", tmp_path / "lam.json")
    sk = cfg.model
    assert (sk.recipe, sk.lam, sk.init, sk.lam_scale, cfg.optim.schedule) == \
        ("paper", 0.5, "spnas", 1000.0, "constant")  # file over recipe; the rest the recipe's
    cfg = config_of("superkernel", "--recipe", "paper", "--config", tmp_path / "lam.json",
                    "--lam", "0.7")
    assert cfg.model.lam == 0.7
    (tmp_path / "paper.json").write_text('{"recipe": "paper"}')  # the file may pick the recipe
    assert to_flat(config_of("superkernel", "--config", tmp_path / "paper.json")) == \
        to_flat(D.superkernel_recipe("paper"))


# ---- a run folder: its config.json as input, and resume -----------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 1-epoch supernet run (3 steps, 4 layers, lr 0.05), and its data."""
    root = tmp_path_factory.mktemp("config")
    write_official(root / "data")
    assert main(train_argv(root / "data", root / "runs", "base", **{"--epochs": 1})) == 0
    return root


@pytest.fixture
def run(base, tmp_path):
    shutil.copytree(base / "runs" / "base", tmp_path / "run")
    return tmp_path / "run"


def resume_argv(run, *flags):
    return ["train", "--save_path", str(run.parent), "--exp_name", run.name, "--resume",
            *map(str, flags)]


def test_a_run_folders_config_json_is_a_valid_config(base, run, tmp_path):
    cfg = config_of("train", "--config", run / "config.json", "--exp_name", "again")
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["resume"] is False  # recorded as false: the file starts a new run
    assert to_flat(cfg) == {**saved["data"], **saved["optim"], **saved["run"], **saved["model"],
                            "exp_name": "again"}
    assert cfg.model.layers == 4 and cfg.optim.lr == 0.05


def test_resume_with_a_changed_setting_is_refused_naming_it(run, capsys):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(resume_argv(run, "--lr", 0.1, "--epochs", 2, "--no-cutout", "--layers", 3)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spnas: error: --lr 0.1 differs from the run's "
                                               "0.05 (config.json); --layers 3 differs from the "
                                               "run's 4 (config.json): a resumed run keeps")
    assert "--cutout" not in err[0] and "--epochs" not in err[0]  # unchanged; allowed
    assert err[0].endswith("Only epochs, stop_after, print_freq, val_interval, ckpt_interval, "
                           "device, deterministic, cudnn_benchmark, cuda_graphs, tensorboard, "
                           "data_path, download may change on resume")  # --resume is no change
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_stop_after_is_not_taken_back(base, run):
    """A trial run's --stop_after is what that command did: a resume without it runs to the end."""
    shutil.rmtree(run)
    argv = train_argv(base / "data", run.parent, run.name, **{"--epochs": 2, "--stop_after": 2})
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["run"]["stop_after"] is None
    assert main(resume_argv(run)) == 0
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 6


def test_resume_takes_the_saved_config_back_and_may_add_epochs(base, run):
    """No flag repeated but --epochs (allowed, logged): 4 layers, lr 0.05, ... come back."""
    saved = json.loads((run / "config.json").read_text())
    assert main(resume_argv(run, "--epochs", 2, "--data_path", base / "data")) == 0
    now = json.loads((run / "config.json").read_text())
    assert now["optim"]["epochs"] == 2 and now["run"]["resume"] is False
    now["optim"]["epochs"] = 1
    for d in (now, saved):  # where the folder is (the copy's), not a setting
        del d["run"]["save_path"], d["run"]["exp_name"]
    assert now == saved
    log = (run / "train.log").read_text()
    assert "resume: --epochs 2 differs from the run's 1 (config.json); allowed" in log
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "val"] == [3, 6]


def test_the_python_api_obeys_the_same_rule(base, run):
    from spnas.stages.train import train_supernet
    cfg = config_of("train", "--config", run / "config.json", "--save_path", run.parent,
                    "--exp_name", run.name, "--resume")
    changed = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.2, epochs=2))
    before = (run / "config.json").read_bytes()
    with pytest.raises(SpnasError, match=r"^--lr 0.2 differs from the run's 0.05 \(config.json\)"):
        train_supernet(changed)
    assert (run / "config.json").read_bytes() == before


def test_a_config_file_that_changes_a_resumed_run_is_refused(run, tmp_path, capsys):
    (tmp_path / "lr.json").write_text('{"lr": 0.5}')
    assert main(resume_argv(run, "--config", tmp_path / "lr.json")) == 2
    assert "--lr 0.5 differs from the run's 0.05" in capsys.readouterr().err


# ---- precision and memory format by device ---------------------------------------------------
def test_training_and_search_default_to_fp32_nchw_on_cuda_and_channels_last_on_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    for cfg in (C.RunConfig(), C.SearchRunConfig(), C.LatencyConfig()):
        assert getattr(cfg, "amp", False) is False and cfg.channels_last is None
        assert cfg.channels_last_for(cpu) and not cfg.channels_last_for(cuda)
        for given in (True, False):  # a given setting holds on every device
            chosen = dataclasses.replace(cfg, channels_last=given)
            assert chosen.channels_last_for(cpu) is given and chosen.channels_last_for(cuda) is given
    run = config_of("train", "--channels_last", "--amp").run
    assert run.channels_last is True and run.amp is True
    assert config_of("train").run.channels_last is None  # recorded as "the device's"


def test_the_pipelines_evaluate_and_export_read_the_retrained_networks_data(tmp_path):
    from spnas.stages.pipeline import Pipeline
    recipe = {"dataset": "cifar100", "data_path": "top", "device": "cpu", "batch_size": 32,
              "retrain": {"dataset": "cifar10", "data_path": "elsewhere"}}
    pipe = Pipeline(recipe, tmp_path)
    evaluate, export = pipe.settings["evaluate"], pipe.settings["export"]
    assert evaluate.dataset is None  # the checkpoint's: retrain's cifar10, not the top level's
    assert pipe._on_retrained("evaluate").data_path == pipe._on_retrained("export").data_path \
        == "elsewhere"
    assert (evaluate.device, evaluate.batch_size) == ("cpu", 32)  # the rest is shared
    assert export.format == "torchscript"  # no extra package needed, unlike spnas export's onnx
    own = Pipeline({**recipe, "evaluate": {"data_path": "mine", "dataset": "cifar10"}}, tmp_path)
    assert (own._on_retrained("evaluate").data_path, own.settings["evaluate"].dataset) == \
        ("mine", "cifar10")


def test_text_settings_take_paths_and_the_stage_calls_take_their_dataclass(tmp_path):
    from pathlib import Path

    from spnas.stages.evaluate import evaluate_checkpoint
    assert C.EvaluateConfig(checkpoint=Path("runs") / "r").checkpoint == str(Path("runs") / "r")
    assert D.RetrainStage(data=C.DataConfig(data_path=tmp_path)).data.data_path == str(tmp_path)
    for old_call in ((str(tmp_path),), (str(tmp_path), "test")):  # the calls of spnas 0.1
        with pytest.raises(TypeError, match=r"evaluate_checkpoint takes an EvaluateConfig "
                                            r"\(spnas.EvaluateConfig\(checkpoint=...\)\), got str"):
            evaluate_checkpoint(*old_call)
    with pytest.raises(TypeError, match=r"got str, split="):
        evaluate_checkpoint(str(tmp_path), split="test")
    with pytest.raises(TypeError, match=r"got nothing"):
        evaluate_checkpoint()
    with pytest.raises(SpnasError):  # cfg= is the dataclass too: it runs (and finds no file)
        evaluate_checkpoint(cfg=C.EvaluateConfig(checkpoint=str(tmp_path / "none.pt")))


def test_a_missing_checkpoint_or_arch_is_one_line(capsys):
    for argv, flag in ((["evaluate"], "--checkpoint"), (["export"], "--checkpoint"),
                       (["profile"], "--arch")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"spnas: error: {flag} is required"), err


def test_profile_times_in_the_devices_memory_format_unless_told():
    from spnas.arch import Arch
    from spnas.spaces.spos import spos_space
    from spnas.stages.profile import profile_arch
    arch = Arch.parse("k3 k5 x k7", spos_space(layers=4))
    assert profile_arch(arch, batch=1, warmup=0, repeats=1)["channels_last"] is True  # the CPU's
    assert profile_arch(arch, batch=1, warmup=0, repeats=1, channels_last=False)["channels_last"] is False
    from spnas.stages.profile import profile
    r = profile(C.ProfileConfig(arch="k3 " * 20, resolution=48, channels_last=False, device="cpu",
                                batch_size=2, warmup=0, repeats=1))
    assert (r["resolution"], r["channels_last"], r["amp"]) == (48, False, False)
    assert r["macs"] > profile(C.ProfileConfig(arch="k3 " * 20, batch_size=1, warmup=0,
                                               repeats=1))["macs"]  # 48x48 costs more than 32x32


PIPELINE_RECIPES = ("smoke.yaml", "spos_c10_fast.yaml", "spos_c10_original.yaml")


@pytest.mark.parametrize("name", PIPELINE_RECIPES)
def test_every_shipped_pipeline_recipe_builds_its_stage_settings(name, tmp_path):
    from spnas.stages.pipeline import Pipeline
    pipe = Pipeline(read_recipe(ROOT / "recipes" / name), tmp_path)
    supernet, retrain = pipe.settings["supernet"], pipe.settings["retrain"]
    search, evaluate = pipe.settings["search"], pipe.settings["evaluate"]
    assert isinstance(supernet, D.SupernetStage) and isinstance(retrain, D.RetrainStage)
    if name == "spos_c10_fast.yaml":  # sized from speeds measured with bf16 + channels_last
        assert supernet.run.amp and retrain.run.amp and search.amp and evaluate.amp
        assert supernet.run.channels_last and retrain.run.channels_last and search.channels_last
    else:
        assert not (supernet.run.amp or retrain.run.amp or search.amp or evaluate.amp)
    # the original's recipe as its published run: PyTorch 1.7.1's zero-filled gradients
    assert supernet.model.unsampled_momentum is (name == "spos_c10_original.yaml")
    assert supernet.model.val_recal is (name != "spos_c10_original.yaml")  # its validation too


def test_the_readme_lists_what_a_resume_may_change():
    import re
    from pathlib import Path

    from spnas.resume import RESUMABLE
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sentence = re.search(r"Only\s+(`[^.]*?)\s+may change", readme)
    assert sentence, "README: the 'Only ... may change' sentence of the Resume paragraph"
    listed = set(re.findall(r"`(\w+)`", sentence.group(1)))
    assert listed == set(RESUMABLE) - {"resume"}


PATH_SETTINGS = {"data_path", "save_path", "arch", "checkpoint", "out", "runs", "baseline", "src",
                 "latency_table"}


@pytest.mark.parametrize("command", STAGES)
def test_a_leading_tilde_in_a_file_or_folder_setting_is_the_home_folder(command, tmp_path,
                                                                         monkeypatch):
    from spnas.fields import from_flat
    monkeypatch.setenv("HOME", str(tmp_path))
    default = STAGES[command]()
    names = {path[-1] for path, *_ in leaf_fields(default)} & PATH_SETTINGS
    assert names, command
    for name in names:
        cfg = from_flat(default, {name: ("~/x",) if name == "runs" else "~/x"})
        got = to_flat(cfg)[name]
        assert got == ((str(tmp_path / "x"),) if name == "runs" else str(tmp_path / "x")), name


def test_the_shell_did_not_expand_a_tilde_the_run_does(tmp_path, monkeypatch):
    from spnas.cli.generate import read_recipe
    from spnas.stages.pipeline import Pipeline
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = config_of("search", "--checkpoint=~/sn", "--out=~/found", "--data_path=~/data")
    assert (cfg.checkpoint, cfg.out, cfg.data.data_path) == (
        str(tmp_path / "sn"), str(tmp_path / "found"), str(tmp_path / "data"))
    (tmp_path / "r.json").write_text(json.dumps({"seed": 3}))
    assert read_recipe("~/r.json") == {"seed": 3}
    assert Pipeline({}, "~/p").out == tmp_path / "p"


@pytest.mark.parametrize("config, note", [
    (D.SupernetStage(data=C.DataConfig(cutout_length=8)), "--cutout_length 8 is not used without --cutout"),
    (D.SupernetStage(optim=C.OptimConfig(schedule="constant", min_lr=0.01)),
     "--min_lr 0.01 is not used with --schedule constant"),
    (D.SupernetStage(optim=C.OptimConfig(decay_epochs=3)), "--decay_epochs 3 is not used without"),
    (D.SupernetStage(optim=C.OptimConfig(momentum=0, nesterov=True)), "--nesterov is not used with "
     "--momentum 0"),
    (D.SupernetStage(model=C.SupernetConfig(val_recal=False, recal_images=64)),
     "--recal_images 64 is not used with --no-val_recal"),
    (D.RetrainStage(model=C.RetrainConfig(ema_decay=0.99)), "--ema_decay 0.99 is not used without --ema"),
    (D.FinetuneStage(model=C.FinetuneConfig(checkpoint="c.pt", ema_warmup=False)),
     "--no-ema_warmup is not used without --ema"),
    (D.FinetuneStage(model=C.FinetuneConfig(checkpoint="c.pt", recal_images=64)),
     "--recal_images 64 is not used without --arch"),
    (D.FinetuneStage(optim=C.OptimConfig(epochs=2), model=C.FinetuneConfig(
        checkpoint="c.pt", freeze_epochs=2, backbone_lr_scale=0.1)),
     "--backbone_lr_scale 0.1 is not used when --freeze_epochs covers every epoch"),
    (D.superkernel_recipe(rmsprop_eps=0.1), "--rmsprop_eps 0.1 is not used with --optimizer sgd"),
    (D.superkernel_recipe("paper", nesterov=True), "--nesterov is not used with --optimizer rmsprop_tf"),
    (D.superkernel_recipe(warmup_frac=0, keep_prob=0.5), "--keep_prob 0.5 is not used with --warmup_frac 0"),
    (D.RetrainStage(optim=C.OptimConfig(epochs=2, warmup_epochs=5)), "--warmup_epochs 5 is longer "
     "than the run (--epochs 2): the learning rate rises all run long and peaks at 0.4 x --lr"),
])
def test_a_setting_the_run_will_not_use_gets_a_note(config, note):
    notes = C.unused_settings(config)
    assert len(notes) == 1 and notes[0].startswith(note)


@pytest.mark.parametrize("config", [
    D.SupernetStage(), D.RetrainStage(), D.FinetuneStage(), D.superkernel_recipe(),
    D.superkernel_recipe("paper"),  # its constant schedule, rmsprop_tf and no nesterov agree
    D.SupernetStage(data=C.DataConfig(cutout=True, cutout_length=8)),
    D.RetrainStage(optim=C.OptimConfig(epochs=2, warmup_epochs=2), model=C.RetrainConfig(
        ema=True, ema_decay=0.99)),
])
def test_settings_in_use_get_no_note(config):
    assert C.unused_settings(config) == []


def test_a_run_logs_each_unused_setting(fake_cifar, tmp_path, capsys):
    argv = train_argv(fake_cifar, tmp_path, **{"--epochs": 1, "--cutout_length": 8,
                                              "--warmup_epochs": 3})
    assert main(argv) == 0
    out = capsys.readouterr().err
    assert "note: --cutout_length 8 is not used without --cutout" in out
    assert "note: --warmup_epochs 3 is longer than the run (--epochs 1)" in out
    assert main(train_argv(fake_cifar, tmp_path, exp="plain", **{"--epochs": 1})) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_config_json_from_before_the_ema_warmup_resumes_with_the_constant_decay():
    from spnas.resume import saved_settings
    old_run = {"model_type": "RetrainConfig", "model": {"ema": True, "ema_decay": 0.99}}
    assert saved_settings(old_run)["ema_warmup"] is False  # as it ran
    new_run = {"model_type": "RetrainConfig", "model": {"ema": True, "ema_warmup": True}}
    assert saved_settings(new_run)["ema_warmup"] is True
    supernet = {"model_type": "SupernetConfig", "model": {"val_recal": True}}
    assert "ema_warmup" not in saved_settings(supernet)


@pytest.mark.parametrize("command, hint", [("evaluate", "--checkpoint"), ("export", "--checkpoint"),
                                           ("curves", "as the command's argument")])
def test_a_run_config_json_given_to_a_command_that_is_not_training_says_so(run, command, hint,
                                                                            capsys):
    assert main([command, "--config", str(run / "config.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the config.json of a spnas train run" in err[0], err
    assert hint in err[0] and str(run) in err[0]
