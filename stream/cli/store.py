"""``embstream store``: backup, restore, info and check of a worker's RocksDB store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from store.errors import StoreError, StoreInUseError
from store.maintenance import describe_store, estimated_keys, restore_store, verify_store
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.cli.client import api_client
from stream.client import ConnectionFailedError, ResponseError
from stream.console import progress_bar
from stream.settings import Settings

__all__ = ["add_store_commands", "run_store"]


def add_store_commands(commands: Any) -> None:
    store = commands.add_parser("store", help="back up, restore, describe or check the store")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    backup = actions.add_parser(
        "backup", help="copy the store to a new directory (consistent, also while the worker runs)"
    )
    backup.add_argument("dir", type=Path, help="where the backup goes (must not exist)")
    backup.add_argument(
        "--api",
        help="the running worker's API, asked when the store is in use or not here "
        "(default: EMBSTREAM_API_URL, else EMBSTREAM_API_HOST:EMBSTREAM_API_PORT, 127.0.0.1:8080)",
    )
    restore = actions.add_parser("restore", help="replace the store with a backup (worker stopped)")
    restore.add_argument("dir", type=Path, help="a directory written by: embstream store backup")
    restore.add_argument(
        "--as-new-worker",
        action="store_true",
        help="the backup comes from another worker (seeding a scale-out worker): drop its worker name",
    )
    actions.add_parser("info", help="serving version, entities, states and offsets (also while running)")
    actions.add_parser("check", help="read every byte of the store, verifying checksums")
    for action in actions.choices.values():
        action.add_argument("--data-dir", type=Path, help="RocksDB directory (default: embstream-data)")


def run_store(args: argparse.Namespace) -> int:
    settings = Settings.from_env().with_overrides(data_dir=args.data_dir)
    data_dir = settings.data_dir
    if args.action == "backup":
        return _backup(settings, args.dir, args.api)
    if args.action == "restore":
        with progress_bar(None, "checking the backup", unit=" keys") as bar:
            restored = restore_store(args.dir, data_dir, bar.update, new_worker=args.as_new_worker)
        _say(f"restored {args.dir} into {data_dir}")
        if restored["replaced"]:
            _say(f"the previous store was moved to {restored['replaced']} (delete it when satisfied)")
        print(json.dumps(restored, indent=2))
        return 0
    if not (data_dir / "CURRENT").is_file():
        raise StoreError(f"there is no store at {data_dir} (pass --data-dir or set EMBSTREAM_DATA_DIR)")
    store = VersionedVectorStore(data_dir, StoreOptions(block_cache_mb=0), read_only=True)
    try:
        if args.action == "info":
            print(json.dumps(describe_store(store), indent=2))
        else:
            with progress_bar(estimated_keys(store), "checking", unit=" keys") as bar:
                counts = verify_store(store, bar.update)
            _say(f"store at {data_dir} is readable end to end")
            print(json.dumps({"path": str(data_dir), "keys": counts}, indent=2))
    finally:
        store.close()
    return 0


def _backup(settings: Settings, target: Path, api: str | None) -> int:
    """Copy the store here when no worker holds it; otherwise (or with ``--api``) ask the
    worker that does, found through the same ``EMBSTREAM_*`` settings it runs with."""
    data_dir = settings.data_dir
    local = (data_dir / "CURRENT").is_file()
    if local and api is None:
        try:
            store = VersionedVectorStore(data_dir, StoreOptions(block_cache_mb=0))
        except StoreInUseError:  # the worker writes it, inside its EMBSTREAM_BACKUP_DIR
            pass
        else:
            target = target.absolute()
            try:
                store.checkpoint(target)
                described = describe_store(store)
            finally:
                store.close()
            _say(f"backup of {data_dir} written to {target}")
            print(json.dumps({**described, "path": str(target)}, indent=2))
            return 0
    with api_client(settings, api) as client:
        try:
            body = client.backup(str(target))
        except ResponseError as error:
            raise StoreError(
                f"the running worker at {client.base_url} refused the backup: {error.status} {error.message}"
            ) from None
        except ConnectionFailedError as error:
            where = "is in use" if local else f"is not at {data_dir} (EMBSTREAM_DATA_DIR, --data-dir)"
            raise StoreError(
                f"the store {where}, and no worker answers at {client.base_url} ({error}): run the command "
                "with the worker's EMBSTREAM_* settings, or pass --data-dir (a stopped worker's store) "
                "or --api (a running worker's address)"
            ) from None
    _say(f"backup written by the running worker at {client.base_url} to {body['path']}")
    print(json.dumps(body, indent=2))
    return 0


def _say(message: str) -> None:
    print(f"embstream: {message}", file=sys.stderr)
