"""The ``embstream`` command line: run, demo, produce, lookup, recommend, train, models, swap, store."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from models.errors import ModelError
from models.registry import version_number
from store.errors import StoreError
from stream.cli.models import add_model_commands, run_models, run_train
from stream.cli.store import add_store_commands, run_store
from stream.cli.swap import add_swap_commands, run_swap
from stream.kafka.broker import BrokerError
from stream.rollout.messages import ControlError
from stream.settings import Settings, SettingsError

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker", help="host:port[,host:port] (default: EMBSTREAM_BROKER, else start the embedded broker)"
    )
    parser.add_argument("--data-dir", type=Path, help="RocksDB directory (default: embstream-data)")
    parser.add_argument("--registry", type=Path, help="model registry (default: embstream-registry)")
    parser.add_argument("--api-host", help="address the lookup API binds (default: 127.0.0.1)")
    parser.add_argument("--api-port", type=int, help="lookup API port (default: 8080)")
    parser.add_argument("--topic", help="interactions topic (default: interactions)")
    parser.add_argument("--partitions", type=_positive_int, help="partitions of new topics (default: 4)")
    parser.add_argument(
        "--encoder-version",
        type=version_number,
        help="version to refresh with (default: the registry's latest)",
    )
    parser.add_argument("--versions-kept", type=_positive_int, help="versions kept per id (default: 5)")
    parser.add_argument("--seed", type=int, help="seed for the default encoder and demo data")
    parser.add_argument(
        "--index-versions",
        type=_non_negative_int,
        help="versions with an item index for recommendations (default: 2; 0: off)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_const",
        const=True,
        help="share the group's partitions with other workers (default: EMBSTREAM_SCALE_OUT, off)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embstream", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="worker plus lookup API")
    _add_service_options(run)

    demo = commands.add_parser("demo", help="run plus a synthetic event producer and a live status line")
    _add_service_options(demo)
    demo.add_argument("--rate", type=float, default=300.0, help="synthetic events per second (default: 300)")

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

    add_model_commands(commands)
    add_swap_commands(commands)
    add_store_commands(commands)

    lookup = commands.add_parser("lookup", help="fetch one embedding from a running API")
    lookup.add_argument("kind", choices=["user", "item"])
    lookup.add_argument("id")
    lookup.add_argument("--version", type=version_number)
    lookup.add_argument(
        "--api", default=None, help="API base URL (default: EMBSTREAM_API_URL or http://127.0.0.1:8080)"
    )
    recommend = commands.add_parser("recommend", help="top-k items for a user from a running API")
    recommend.add_argument("user_id")
    recommend.add_argument("--k", type=_positive_int, help="how many items (default: 10)")
    recommend.add_argument("--version", type=version_number, help="version (default: serving)")
    recommend.add_argument(
        "--include-seen", action="store_true", help="keep items the user interacted with recently"
    )
    recommend.add_argument(
        "--api", default=None, help="API base URL (default: EMBSTREAM_API_URL or http://127.0.0.1:8080)"
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = (
        "broker",
        "data_dir",
        "registry",
        "api_host",
        "api_port",
        "topic",
        "partitions",
        "encoder_version",
        "versions_kept",
        "seed",
        "index_versions",
        "scale_out",
    )
    return Settings.from_env().with_overrides(**{n: getattr(args, n, None) for n in names})


def _serve(coroutine_factory) -> int:  # type: ignore[no-untyped-def]
    """Run until SIGINT/SIGTERM; a second Ctrl-C exits at once."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            if stop.is_set():
                raise SystemExit(130)
            print("\nembstream: stopping (Ctrl-C again to force)", file=sys.stderr, flush=True)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, request_stop)
        await coroutine_factory(stop)

    asyncio.run(main())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from stream.service import run_service

    settings = _settings(args)
    return _serve(lambda stop: run_service(settings, stop))


def _cmd_demo(args: argparse.Namespace) -> int:
    from stream.cli.demo import run_demo

    settings = _settings(args)
    return _serve(lambda stop: run_demo(settings, stop, rate=args.rate))


def _cmd_produce(args: argparse.Namespace) -> int:
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


def _cmd_lookup(args: argparse.Namespace) -> int:
    path = f"/v1/embeddings/{args.kind}/{urllib.parse.quote(args.id, safe='')}"
    return _get_api(args.api, path, {"version": args.version})


def _cmd_recommend(args: argparse.Namespace) -> int:
    path = f"/v1/recommendations/{urllib.parse.quote(args.user_id, safe='')}"
    query = {"k": args.k, "version": args.version, "exclude_seen": "false" if args.include_seen else None}
    return _get_api(args.api, path, query)


def _get_api(api: str | None, path: str, query: dict[str, object]) -> int:
    """GET ``path`` from a running API and print the JSON: exit 1 on an error answer, 2 when
    the API cannot be reached."""
    import os

    base = (api or os.environ.get("EMBSTREAM_API_URL") or "http://127.0.0.1:8080").rstrip("/")
    given = {name: value for name, value in query.items() if value is not None}
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(given)}" if given else "")
    request = urllib.request.Request(url)
    token = os.environ.get("EMBSTREAM_API_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(json.dumps(json.loads(response.read())))
            return 0
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
        print(f"embstream: {error.code} {body.get('message', error.reason)}", file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(f"embstream: cannot reach the API at {base}: {error.reason}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "run": _cmd_run,
        "demo": _cmd_demo,
        "produce": _cmd_produce,
        "lookup": _cmd_lookup,
        "recommend": _cmd_recommend,
        "train": run_train,
        "models": run_models,
        "swap": run_swap,
        "store": run_store,
    }
    try:
        return handlers[args.command](args)
    except (SettingsError, BrokerError, StoreError, ModelError, ControlError) as error:
        print(f"embstream: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"embstream: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
