"""``embstream lookup`` and ``embstream recommend``: read a running worker's API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from models.registry import version_number
from stream.cli.client import ApiAnswerError, ApiClient, ApiUnreachableError
from stream.cli.options import positive_int
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
    path = f"/v1/embeddings/{args.kind}/{urllib.parse.quote(args.id, safe='')}"
    return _print(ApiClient.of(Settings.from_env(), args.api), path, {"version": args.version})


def run_recommend(args: argparse.Namespace) -> int:
    path = f"/v1/recommendations/{urllib.parse.quote(args.user_id, safe='')}"
    query = {
        "k": args.k,
        "version": args.version,
        "exclude_seen": "false" if args.include_seen else None,
        "fallback": args.fallback,
    }
    return _print(ApiClient.of(Settings.from_env(), args.api), path, query)


def _print(client: ApiClient, path: str, query: dict[str, object]) -> int:
    """Print the JSON answer: exit 1 on an error answer, 2 when the API cannot be reached."""
    try:
        print(json.dumps(client.get(path, query)))
        return 0
    except ApiAnswerError as error:
        print(f"embstream: {error.status} {error.message}", file=sys.stderr)
        return 1
    except ApiUnreachableError as error:
        print(f"embstream: cannot reach the API at {client.base}: {error}", file=sys.stderr)
        return 2
