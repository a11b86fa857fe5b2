"""``embstream produce``: send events (a JSON-lines file, stdin, or synthetic) to the topic."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from stream.errors import SettingsError
from stream.settings import Settings

__all__ = ["add_produce_command", "run_produce"]


def add_produce_command(commands: Any) -> None:
    produce = commands.add_parser("produce", help="send events to the interactions topic")
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="JSON-lines file, or - for stdin")
    source.add_argument(
        "--synthetic", type=int, metavar="N", help="send N synthetic events (0: until stopped)"
    )
    produce.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    produce.add_argument(
        "--bad-every",
        type=int,
        default=0,
        metavar="N",
        help="with --synthetic, make every N-th event malformed",
    )
    produce.add_argument("--broker", help="host:port[,host:port] (default: EMBSTREAM_BROKER)")
    produce.add_argument("--topic", help="topic (default: interactions)")
    produce.add_argument("--seed", type=int, help="seed of the synthetic world")


def run_produce(args: argparse.Namespace) -> int:
    from stream.kafka.producer import jsonl_records, send_records, synthetic_records

    settings = Settings.from_env().with_overrides(broker=args.broker, topic=args.topic, seed=args.seed)
    if not settings.broker:
        raise SettingsError(
            "no broker: pass --broker or set EMBSTREAM_BROKER "
            "(`embstream run` prints the embedded broker's address)"
        )
    if args.synthetic is not None:
        if args.synthetic < 0:
            raise SettingsError("--synthetic takes a count >= 0")
        records = synthetic_records(args.synthetic or None, seed=settings.seed, bad_every=args.bad_every)
    elif args.file == "-":
        records = jsonl_records(sys.stdin.buffer)
    else:
        path = Path(args.file)
        if not path.is_file():
            raise SettingsError(f"no such file: {path}")
        records = jsonl_records(path.open("rb"))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        sent = send_records(
            settings.broker_servers,
            settings.topic,
            records,
            rate=args.rate,
            progress=sys.stderr if sys.stderr.isatty() else None,
            **settings.kafka_security.kafka_python(),
        )
    except KeyboardInterrupt:
        print("embstream: producer stopped", file=sys.stderr)
        return 0
    print(f"embstream: sent {sent:,} events to {settings.topic!r}", file=sys.stderr)
    return 0
