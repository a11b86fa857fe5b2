"""``embstream lookup`` and ``embstream recommend``: read a running worker's API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson

from models.registry import version_number
from stream.cli.client import api_client
from stream.cli.options import positive_int
from stream.client import Client, ConnectionFailedError, ResponseError
from stream.settings import Settings

__all__ = ["add_lookup_commands", "run_lookup", "run_recommend"]

_API_HELP = "API base URL (default: EMBSTREAM_API_URL, else EMBSTREAM_API_HOST:EMBSTREAM_API_PORT)"


def add_lookup_commands(commands: Any) -> None:
    lookup = commands.add_parser("lookup", help="fetch one embedding from a running API")
    lookup.add_argument("kind", choices=["user", "item"])
    lookup.add_argument("id")
    lookup.add_argument("--version", type=version_number)
    lookup.add_argument("--api", default=None, help=_API_HELP)
    recommend = commands.add_parser("recommend", help="top-k items for a user from a running API")
    recommend.add_argument("user_id")
    recommend.add_argument("--k", type=positive_int, help="how many items (default: 10)")
    recommend.add_argument("--version", type=version_number, help="version (default: serving)")
    recommend.add_argument(
        "--include-seen", action="store_true", help="keep items the user interacted with recently"
    )
    recommend.add_argument(
        "--fallback",
        choices=["popular", "none"],
        help="a user with no vector gets the most popular items (popular, the default) or an error (none)",
    )
    recommend.add_argument("--api", default=None, help=_API_HELP)


def run_lookup(args: argparse.Namespace) -> int:
    with api_client(Settings.from_env(), args.api) as client:
        return _print(client, lambda: asdict(client.get(args.kind, args.id, args.version)))


def run_recommend(args: argparse.Namespace) -> int:
    with api_client(Settings.from_env(), args.api) as client:
        return _print(
            client,
            lambda: asdict(
                client.recommend(
                    args.user_id,
                    args.k,
                    args.version,
                    exclude_seen=not args.include_seen,
                    fallback=args.fallback or "popular",
                )
            ),
        )


def _print(client: Client, call: Callable[[], dict[str, Any]]) -> int:
    """Print the answer as the API's JSON: exit 1 on an error answer, 2 when the API cannot be
    reached."""
    try:
        # float32 values as the API writes them (their shortest form), laid out as json does
        print(json.dumps(orjson.loads(orjson.dumps(call(), option=orjson.OPT_SERIALIZE_NUMPY))))
        return 0
    except ResponseError as error:
        print(f"embstream: {error.status} {error.message}", file=sys.stderr)
        return 1
    except ConnectionFailedError as error:
        print(f"embstream: cannot reach the API at {client.base_url}: {error}", file=sys.stderr)
        return 2
