"""`edge train perception` and `edge eval perception` (argument parsing only; torch is imported when run)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from edge.modalities.registry import registry
from edge.perception.data import DEFAULT_EVAL, DEFAULT_TRAIN

DRIVES_DIR = Path("drives/perception")
CACHE_DIR = Path(".cache/perception")
MODEL_DIR = Path("models/perception")


def _common(p: argparse.ArgumentParser, default_drives: tuple[str, ...], stride: int) -> None:
    p.add_argument("--drives", nargs="+", default=list(default_drives), metavar="DRIVE",
                   help="bag directories or scenario:seed:duration specs, generated under --drives-dir if absent "
                        f"[{' '.join(default_drives)}]")
    p.add_argument("--drives-dir", type=Path, default=DRIVES_DIR, help=f"where generated drives go [{DRIVES_DIR}]")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help=f"preprocessed sample cache [{CACHE_DIR}]")
    p.add_argument("--stride", type=int, default=stride, help=f"use every N-th synchronised sample [{stride}]")
    p.add_argument("--rig", type=Path, default=None, help="rig calibration YAML [calibration/default_rig.yaml]")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads [2]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perception", help="train the encoders and BEV fusion on generated drives (CPU, minutes)")
    _common(p, DEFAULT_TRAIN, 2)
    p.add_argument("--out", type=Path, default=MODEL_DIR, help=f"checkpoint directory (safetensors) [{MODEL_DIR}]")
    p.add_argument("--work", type=Path, default=None,
                   help="resumable training state (weights + optimizer) [<cache-dir>/run-seed<seed>]")
    p.add_argument("--steps", type=int, default=600, help="optimisation steps [600]")
    p.add_argument("--batch", type=int, default=8, help="BEV samples per step [8]")
    for plugin in registry():  # a head of its own may come with a modality that is not fused into the BEV map
        if not plugin.bev:
            p.add_argument(f"--{plugin.name}-batch", type=int, default=None, dest=_head_flag(plugin.name),
                           metavar="N", help=f"samples per step of the {plugin.name} encoder's own head [its default]")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate [2e-3]")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch sampling [0]")
    p.add_argument("--save-every", type=int, default=50, help="steps between resumable saves [50]")
    p.add_argument("--resume", action="store_true", help="continue from the state in --work")
    p.add_argument("--init", type=Path, default=None, metavar="DIR",
                   help="fine-tune: start from the checkpoints in DIR (weights and the statistics saved with them), "
                        "fresh optimizer; a modality without weights in DIR starts fresh, the fusion head widened "
                        "for it")
    p.set_defaults(func=_train)


def register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perception", help="BEV IoU per class / lighting / modality subset, each head's accuracy")
    _common(p, DEFAULT_EVAL, 2)
    p.add_argument("--model", type=Path, default=MODEL_DIR, help=f"checkpoint directory [{MODEL_DIR}]")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")
    p.set_defaults(func=_eval)


def _head_flag(name: str) -> str:
    return f"head_batch_{name}"


def _head_batches(args: argparse.Namespace) -> dict[str, int]:
    """The heads' batch sizes given on the command line (`--<name>-batch`), by modality."""
    return {p.name: getattr(args, _head_flag(p.name)) for p in registry()
            if not p.bev and getattr(args, _head_flag(p.name), None) is not None}


def _setup(args: argparse.Namespace) -> tuple[object, list[Path]]:
    import torch

    from edge.perception.data import resolve_drives
    from edge.sensors.rig import load_rig

    torch.set_num_threads(max(1, args.threads))
    if args.stride < 1:
        from edge.errors import EdgeError
        raise EdgeError(f"--stride must be >= 1, got {args.stride}")
    return load_rig(args.rig), resolve_drives(args.drives, args.drives_dir, progress=not args.quiet)


def _train(args: argparse.Namespace) -> int:
    import torch

    from edge.encoders import PerceptionConfig, PerceptionStack
    from edge.perception.data import CachedDrives
    from edge.perception.train import Trainer, TrainConfig, load_initial, train

    rig, bags = _setup(args)
    torch.manual_seed(args.seed)
    stack = PerceptionStack(PerceptionConfig(), rig)
    data = CachedDrives(bags, stack, args.stride, args.cache_dir, progress=not args.quiet)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, save_every=args.save_every,
                      head_batches=_head_batches(args))
    trainer = Trainer(stack, data.arrays, cfg)
    work = args.work or args.cache_dir / f"run-seed{args.seed}"
    if args.resume and args.init is not None:
        from edge.errors import EdgeError
        raise EdgeError("--resume and --init exclude each other: --resume continues a run, --init starts one from weights")
    if args.resume:
        if not (work / "train_state.json").exists():
            from edge.errors import EdgeError
            raise EdgeError(f"--resume: no training state in {work}")
        loaded = PerceptionStack.load(work, rig, plugins=stack.plugins.values())
        stack.load_state_dict(loaded.state_dict())
        trainer.load_state(work)
        print(f"resumed from {work} at step {trainer.step}", file=sys.stderr)
    elif args.init is not None:
        fresh = load_initial(stack, args.init)
        trainer.init_from_data(fresh)
        new_bev = [n for n in fresh if n in stack.bev_names]
        widened = f"; fusion head widened for {', '.join(new_bev)}" if new_bev else ""
        print(f"fine-tuning from {args.init}" + (f"; new: {', '.join(fresh)} (no weights there){widened}"
                                                 if fresh else ""), file=sys.stderr)
    else:
        trainer.init_from_data()
    command = "edge train perception " + " ".join(shlex.quote(a) for a in sys.argv[3:]) \
        if sys.argv[1:3] == ["train", "perception"] else "edge train perception (API)"
    extra = {"command": command, "seed": args.seed, "drives": [str(b) for b in bags], "stride": args.stride,
             "samples": len(data)}
    history = train(trainer, work, extra, progress=not args.quiet)
    stack.save(args.out, {k: json.dumps(v) for k, v in {**extra, "steps": trainer.step}.items()})
    if history:
        n = max(1, len(history) // 10)
        first = sum(h["loss"] for h in history[:n]) / n
        last = sum(h["loss"] for h in history[-n:]) / n
        print(f"trained {trainer.step} steps on {len(data)} samples from {len(bags)} drives; "
              f"loss {first:.3f} -> {last:.3f}; weights in {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from edge.encoders import PerceptionStack
    from edge.perception.data import CachedDrives
    from edge.perception.evaluate import evaluate, format_report

    rig, bags = _setup(args)
    stack = PerceptionStack.load(args.model, rig)
    data = CachedDrives(bags, stack, args.stride, args.cache_dir, progress=not args.quiet)
    res = evaluate(stack, data.arrays, progress=not args.quiet)
    res["drives"] = [str(b) for b in bags]
    res["stride"] = args.stride
    print(f"model {args.model}; {len(data)} samples from {len(bags)} drives (every {args.stride}. sample)")
    print(format_report(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return 0
