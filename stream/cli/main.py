"""The ``embstream`` command line: run, demo, produce, lookup, recommend, train, models, swap, store."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from models.errors import ModelError
from store.errors import StoreError
from stream.cli.lookup import add_lookup_commands, run_lookup, run_recommend
from stream.cli.models import add_model_commands, run_models, run_train
from stream.cli.produce import add_produce_command, run_produce
from stream.cli.run import add_run_commands, run_demo_command, run_run_command
from stream.cli.store import add_store_commands, run_store
from stream.cli.swap import add_swap_commands, run_swap
from stream.errors import StreamError

__all__ = ["DESCRIPTION", "build_parser", "main"]

#: What ``embstream --help`` says first: plain text (the module's docstring is for readers
#: of the code).
DESCRIPTION = (
    "Kafka interaction events in, fresh versioned user and item embeddings out. "
    "Try it with: embstream demo. Run it against your broker with: embstream run --broker HOST:PORT. "
    "Every command takes --help."
)

_VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run_run_command,
    "demo": run_demo_command,
    "produce": run_produce,
    "lookup": run_lookup,
    "recommend": run_recommend,
    "train": run_train,
    "models": run_models,
    "swap": run_swap,
    "store": run_store,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embstream", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_commands(commands)
    add_produce_command(commands)
    add_model_commands(commands)
    add_swap_commands(commands)
    add_store_commands(commands)
    add_lookup_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _VERBS[args.command](args)
    except (StreamError, StoreError, ModelError, OSError) as error:
        print(f"embstream: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
