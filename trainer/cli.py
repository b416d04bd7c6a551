"""`trainer`: training on datakit shards (argparse: the GPU machine has no typer/rich)."""
from __future__ import annotations

import argparse
import sys

from trainer.data import dataset_index, open_shards


def _inspect(args: argparse.Namespace) -> int:
    tables = open_shards(args.shards)
    print(f"{'kind':<16}{'dataset':<24}{'records':>10}")
    for kind, table in tables.items():
        for name, rows in sorted(dataset_index(table).items()):
            print(f"{kind:<16}{name:<24}{len(rows):>10}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from trainer.train import load_config, train

    cfg = load_config(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    final = train(cfg, resume=not args.restart)
    print(f"model: {final}  (SentenceTransformer({str(final)!r}) loads it)")
    return 0


def app(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train both stages from a YAML config, then export a SentenceTransformer model")
    r.add_argument("config")
    r.add_argument("--output-dir", default=None)
    r.add_argument("--restart", action="store_true", help="ignore checkpoints in the output folder")
    r.set_defaults(func=_run)
    p = sub.add_parser("inspect", help="what the trainer sees in a shard folder: records per kind and dataset")
    p.add_argument("shards", help="output folder of `datakit build`")
    p.set_defaults(func=_inspect)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
