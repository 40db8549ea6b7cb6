"""``spnas import-reference``: a state_dict saved by the original SPOS CIFAR code, as a checkpoint."""
from __future__ import annotations

import argparse

from spnas.cli.flags import check_positive


def add_import_reference_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("src", metavar="SRC.pth",
                   help="torch.save(model.state_dict()) of the original's train_supernet.py "
                        "(a supernet) or retrain_best_choice.py (one network)")
    p.add_argument("--out", required=True, metavar="DST.pt", help="the spnas checkpoint to write")
    p.add_argument("--resize", action=argparse.BooleanOptionalAction, default=None,
                   help="check that the file is in the --resize (imagenet) layout; --no-resize: "
                        "the CIFAR layout (default: take the file's)")
    p.add_argument("--classes", type=int, default=None,
                   help="check the number of classes (default: take the file's)")
    p.add_argument("--num_choices", type=int, default=4,
                   help="a supernet keeps its first K blocks only: the original's --num_choices "
                        "(it saves all 4 whatever it trained; default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def run_import_reference(args: argparse.Namespace) -> dict:
    from spnas.stages.import_reference import format_import, import_reference
    check_positive(args, "classes")
    r = import_reference(args.src, args.out, args.resize, args.classes, args.num_choices,
                         args.overwrite)
    print(format_import(r))
    return r
