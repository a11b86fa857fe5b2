"""``embstream run`` (worker and API) and ``embstream demo`` (plus a producer and a status line)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from models.registry import version_number
from stream.cli.options import non_negative_int, positive_int
from stream.settings import Settings

__all__ = ["add_run_commands", "run_demo_command", "run_run_command", "service_settings"]


def _add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker", help="host:port[,host:port] (default: EMBSTREAM_BROKER, else start the embedded broker)"
    )
    parser.add_argument("--data-dir", type=Path, help="RocksDB directory (default: embstream-data)")
    parser.add_argument("--registry", type=Path, help="model registry (default: embstream-registry)")
    parser.add_argument("--api-host", help="address the lookup API binds (default: 127.0.0.1)")
    parser.add_argument("--api-port", type=non_negative_int, help="lookup API port (default: 8080)")
    parser.add_argument("--topic", help="interactions topic (default: interactions)")
    parser.add_argument("--partitions", type=positive_int, help="partitions of new topics (default: 4)")
    parser.add_argument(
        "--encoder-version",
        type=version_number,
        help="version to refresh with (default: the registry's latest)",
    )
    parser.add_argument("--versions-kept", type=positive_int, help="versions kept per id (default: 5)")
    parser.add_argument("--seed", type=int, help="seed for the default encoder and demo data")
    parser.add_argument(
        "--index-versions",
        type=non_negative_int,
        help="versions with an item index for recommendations (default: 2; 0: off)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_const",
        const=True,
        help="share the group's partitions with other workers (default: EMBSTREAM_SCALE_OUT, off)",
    )


def add_run_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="worker plus lookup API")
    _add_service_options(run)
    demo = commands.add_parser("demo", help="run plus a synthetic event producer and a live status line")
    _add_service_options(demo)
    demo.add_argument("--rate", type=float, default=300.0, help="synthetic events per second (default: 300)")


def service_settings(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's options on top."""
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


def _serve(run: Callable[[asyncio.Event], Awaitable[None]]) -> int:
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
        await run(stop)

    asyncio.run(main())
    return 0


def run_run_command(args: argparse.Namespace) -> int:
    from stream.service import run_service  # torch and the service load only for these verbs

    settings = service_settings(args)
    return _serve(lambda stop: run_service(settings, stop))


def run_demo_command(args: argparse.Namespace) -> int:
    from stream.cli.demo import run_demo

    settings = service_settings(args)
    return _serve(lambda stop: run_demo(settings, stop, rate=args.rate))
