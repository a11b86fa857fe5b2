"""Backup, restore, describe and verify on real RocksDB stores, and the errors of damaged ones."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from store import (
    StoreDamagedError,
    StoreError,
    StoreInUseError,
    VersionedVectorStore,
    describe_store,
    restore_store,
    verify_store,
)
from store.options import StoreOptions
from stream.cli import main


def _batch(store: VersionedVectorStore, number: int) -> None:
    """One write batch as the worker writes them: state, vectors and the source offset."""
    writer = store.writer()
    ids = [f"u{number}-{n}" for n in range(20)]
    for entity_id in ids:
        writer.put_state("user", entity_id, number.to_bytes(4, "little"))
    writer.put_vectors("user", ids, 1, np.full((20, 4), number, np.float32), number)
    writer.set_offset("interactions", 0, number + 1)
    writer.commit()


def _filled(path: Path, batches: int = 5) -> VersionedVectorStore:
    store = VersionedVectorStore(path)
    store.set_serving_version(1)
    for number in range(batches):
        _batch(store, number)
    return store


def test_a_backup_taken_while_writing_holds_whole_batches_only(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db", 1)
    done = threading.Event()

    def write() -> None:
        number = 1
        while not done.is_set():
            _batch(store, number)
            number += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        backups = [store.checkpoint(tmp_path / f"backup{n}") for n in range(3)]
    finally:
        done.set()
        writer.join()
    store.close()
    for backup in backups:
        copy = VersionedVectorStore(backup, read_only=True)
        try:
            offset = copy.get_offset("interactions", 0)
            assert offset is not None and offset >= 1
            # The offset says batches 0..offset-1 were applied: each is there entirely, and
            # nothing of a later batch is.
            assert copy.version_counts()["user"] == {1: 20 * offset}
            assert copy.count_states("user") == 20 * offset
            assert copy.get_records("user", [f"u{offset}-0"]) == [None]
            assert verify_store(copy)["vectors"] == 20 * offset
        finally:
            copy.close()


def test_a_backup_never_overwrites(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db")
    try:
        (tmp_path / "taken").mkdir()
        with pytest.raises(StoreError, match="already exists"):
            store.checkpoint(tmp_path / "taken")
    finally:
        store.close()


def test_restore_replaces_the_store_and_keeps_the_old_one_aside(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db", 3)
    store.checkpoint(tmp_path / "backup")
    for number in range(3, 6):
        _batch(store, number)
    store.close()
    restored = restore_store(tmp_path / "backup", tmp_path / "db")
    assert restored["serving_version"] == 1 and restored["source_offsets"] == {"interactions/0": 3}
    assert Path(restored["replaced"]).is_dir()
    again = VersionedVectorStore(tmp_path / "db")
    try:
        assert describe_store(again)["entities"]["user"] == {"1": 60}
        assert again.get_offset("interactions", 0) == 3
    finally:
        again.close()
    kept = VersionedVectorStore(restored["replaced"], read_only=True)
    try:
        assert kept.get_offset("interactions", 0) == 6  # nothing was deleted
    finally:
        kept.close()


def test_seeding_a_new_worker_from_another_workers_backup_drops_the_worker_name(tmp_path: Path) -> None:
    store = _filled(tmp_path / "donor", 2)
    writer = store.writer()
    writer.put_meta("worker_id", b"donor-1")
    writer.commit()
    store.checkpoint(tmp_path / "backup")
    store.close()
    restore_store(tmp_path / "backup", tmp_path / "same")
    restore_store(tmp_path / "backup", tmp_path / "new", new_worker=True)
    for name, expected in (("same", b"donor-1"), ("new", None)):
        opened = VersionedVectorStore(tmp_path / name, read_only=True)
        try:
            assert opened.get_meta("worker_id") == expected
            assert opened.get_offset("interactions", 0) == 2  # everything else came along
        finally:
            opened.close()


def test_restore_refuses_a_store_in_use_and_a_missing_backup(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db")
    store.checkpoint(tmp_path / "backup")
    try:
        with pytest.raises(StoreInUseError, match="in use by another process"):
            restore_store(tmp_path / "backup", tmp_path / "db")
    finally:
        store.close()
    with pytest.raises(StoreError, match="no backup at"):
        restore_store(tmp_path / "nowhere", tmp_path / "db")


def _truncate_tables(path: Path) -> None:
    for table in path.glob("*.sst"):
        data = table.read_bytes()
        table.write_bytes(data[: len(data) // 2])


def _flip_a_byte_in_a_block(path: Path) -> None:
    table = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    data = bytearray(table.read_bytes())
    data[len(data) // 4] ^= 0xFF  # inside a data block: the file keeps its size
    table.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (_truncate_tables, "Sst file size mismatch"),
        (lambda path: (path / "CURRENT").unlink(), "CURRENT file is missing"),
        (lambda path: (path / "CURRENT").write_text(""), "CURRENT"),
    ],
)
def test_a_damaged_store_names_the_damage_and_the_ways_out(tmp_path: Path, damage, detail: str) -> None:  # type: ignore[no-untyped-def]
    store = _filled(tmp_path / "db")
    store.compact()
    store.close()
    damage(tmp_path / "db")
    with pytest.raises(StoreDamagedError) as raised:
        VersionedVectorStore(tmp_path / "db")
    message = str(raised.value)
    assert detail in message and "embstream store restore" in message and "rebuilds" in message


def test_check_finds_a_bad_block_that_opening_does_not(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db", 50)
    store.compact()
    store.close()
    _flip_a_byte_in_a_block(tmp_path / "db")
    opened = VersionedVectorStore(tmp_path / "db", StoreOptions(block_cache_mb=0), read_only=True)
    try:
        with pytest.raises(StoreDamagedError, match="column family"):
            verify_store(opened)
    finally:
        opened.close()


def test_a_damaged_store_can_be_restored_over(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db")
    store.checkpoint(tmp_path / "backup")
    store.compact()
    store.close()
    _truncate_tables(tmp_path / "db")
    restored = restore_store(tmp_path / "backup", tmp_path / "db")
    assert restored["replaced"] is not None
    VersionedVectorStore(tmp_path / "db").close()


# ----- the command line ----------------------------------------------------------------------


def test_store_commands_back_up_describe_check_and_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _filled(tmp_path / "db", 4).close()
    data = ["--data-dir", str(tmp_path / "db")]
    assert main(["store", "backup", str(tmp_path / "backup"), *data]) == 0
    assert json.loads(capsys.readouterr().out)["source_offsets"] == {"interactions/0": 4}
    assert main(["store", "info", *data]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entities"]["user"] == {"1": 80} and info["states"]["user"] == 80
    assert main(["store", "check", *data]) == 0
    assert json.loads(capsys.readouterr().out)["keys"]["vectors"] == 80
    assert main(["store", "restore", str(tmp_path / "backup"), *data]) == 0
    assert "moved to" in capsys.readouterr().err


def test_store_commands_explain_instead_of_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "info", "--data-dir", str(tmp_path / "none")]) == 2
    assert "there is no store at" in capsys.readouterr().err
    store = _filled(tmp_path / "db")
    try:  # in use, and no worker API to ask: a clear error naming --api
        code = main(
            [
                "store",
                "backup",
                str(tmp_path / "b"),
                "--data-dir",
                str(tmp_path / "db"),
                "--api",
                "http://127.0.0.1:9",
            ]
        )
        assert code == 2 and "--api" in capsys.readouterr().err
        assert main(["store", "info", "--data-dir", str(tmp_path / "db")]) == 0  # read-only: fine while held
        capsys.readouterr()
    finally:
        store.close()
    store = VersionedVectorStore(tmp_path / "db")
    store.compact()
    store.close()
    _truncate_tables(tmp_path / "db")
    assert main(["store", "check", "--data-dir", str(tmp_path / "db")]) == 2
    assert "damaged" in capsys.readouterr().err


def test_scans_stop_with_an_error_at_a_bad_block_not_quietly(tmp_path: Path) -> None:
    """Backfill and warm-up walk the store with scans: damage must not look like the end."""
    store = _filled(tmp_path / "db", 50)
    store.compact()
    store.close()
    _flip_a_byte_in_a_block(tmp_path / "db")
    opened = VersionedVectorStore(tmp_path / "db", StoreOptions(serving_cache_mb=8))
    try:
        with pytest.raises(StoreDamagedError):
            opened.warm_serving_cache()
        with pytest.raises(StoreDamagedError):
            opened.scan_raw_records("user", "u0-0", "u9-9")
        with pytest.raises(StoreDamagedError, match="checksum"):
            opened.get_raw_records("user", [f"u{n}-0" for n in range(50)])
    finally:
        opened.close()


def test_restore_refuses_nested_directories_and_folders_that_are_not_stores(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db")
    store.checkpoint(tmp_path / "backup")
    with pytest.raises(StoreError, match="inside the store"):
        store.checkpoint(tmp_path / "db" / "inside")
    store.close()
    with pytest.raises(StoreError, match="must not contain one another"):
        restore_store(tmp_path / "db", tmp_path / "db" / "sub")
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a store"):
        restore_store(tmp_path / "backup", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # untouched
    restored = restore_store(tmp_path / "backup", tmp_path / "fresh")  # a new directory is fine
    assert restored["replaced"] is None and (tmp_path / "fresh" / "CURRENT").is_file()


def test_check_reports_progress_as_it_reads(tmp_path: Path) -> None:
    store = _filled(tmp_path / "db", 600)  # 12,000 states and vectors
    try:
        heard: list[int] = []
        counts = verify_store(store, heard.append)
        assert sum(heard) == 10_000 * sum(n // 10_000 for n in counts.values()) > 0
    finally:
        store.close()
