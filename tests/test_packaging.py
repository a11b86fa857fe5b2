"""The public surface and the deployment files: exports pinned, compose file valid."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


EXPORTS = {
    "stream": {
        "VECTORS_MEDIA_TYPE",
        "ApiContext",
        "Backfiller",
        "BatchOutcome",
        "BrokerError",
        "ConsumedRecord",
        "ControlError",
        "EmbeddedBroker",
        "EmbeddingRefresher",
        "Interaction",
        "Metrics",
        "OutgoingMessage",
        "Rejection",
        "RolloutController",
        "RolloutState",
        "Settings",
        "SettingsError",
        "StreamError",
        "StreamWorker",
        "check_swappable",
        "control_message",
        "create_app",
        "decode_outbox",
        "decode_vectors",
        "encode_outbox",
        "ensure_topics",
        "parse_event",
    },
    "stream.client": {
        "AsyncClient",
        "BadAnswerError",
        "BadRequestError",
        "Client",
        "ClientError",
        "ConnectionFailedError",
        "Embedding",
        "Embeddings",
        "ForbiddenError",
        "IndexBuildingError",
        "NotFoundError",
        "Recommendation",
        "RecommendationBatch",
        "RecommendedItem",
        "ResponseError",
        "ServerError",
        "UnauthorizedError",
        "UnavailableError",
        "VersionNotFoundError",
        "VersionUnreachableError",
    },
    "models": {
        "ALIGNER_METHODS",
        "EVENT_TYPES",
        "BackwardAligner",
        "BackwardCompatibilityLoss",
        "Encoder",
        "EncoderConfig",
        "EncoderRegistry",
        "ExportedEncoder",
        "Features",
        "ImportRefusedError",
        "ImportRequest",
        "IncompatibleVersionsError",
        "InputContract",
        "IntegrityError",
        "InteractionLog",
        "ItemInput",
        "ItemState",
        "Manifest",
        "ModelError",
        "RegistryError",
        "SyntheticWorld",
        "TorchEncoder",
        "TrainingConfig",
        "TrainingError",
        "TrainingProgress",
        "TrainingResult",
        "TwoTowerModel",
        "UserInput",
        "UserState",
        "VersionMissingError",
        "VersionRequest",
        "ensure_default_encoder",
        "featurize",
        "featurize_pairs",
        "fit_least_squares",
        "fit_procrustes",
        "import_version",
        "read_interaction_log",
        "train_two_tower",
        "train_version",
    },
    "store": {
        "COMPACT_RECORD_FORMAT",
        "KINDS",
        "RECORD_FORMAT",
        "CarryProvider",
        "EntityNotFoundError",
        "IndexBuildingError",
        "IndexMissingError",
        "IndexUnavailableError",
        "InvalidArgumentError",
        "Kind",
        "NoServingVersionError",
        "RecordFormatError",
        "ResolvedMatrix",
        "ResolvedVector",
        "StoreDamagedError",
        "StoreError",
        "StoreInUseError",
        "StoreOpenError",
        "StoreOptions",
        "StoreWriter",
        "VersionNotFoundError",
        "VersionUnreachableError",
        "VersionedVector",
        "VersionedVectorStore",
        "decode_record",
        "describe_store",
        "encode_record",
        "entity_key",
        "lookup_many",
        "lookup_one",
        "parse_entity_key",
        "resolve_entry",
        "resolve_many",
        "resolve_matrix",
        "resolve_one",
        "restore_store",
        "upsert_entry",
        "verify_store",
    },
}


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_each_package_exports_exactly_its_pinned_public_api(package: str) -> None:
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__))
    assert set(module.__all__) == EXPORTS[package]
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name} is exported but missing"


def test_compose_file_has_kafka_and_a_worker_whose_command_the_cli_accepts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    parser = build_parser()
    for name in ("worker-1", "worker-2", "producer"):
        args = parser.parse_args(services[name]["command"])
        assert args.broker == "kafka:9092"
    workers = [services["worker-1"], services["worker-2"]]
    for worker in workers:
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert worker["environment"]["EMBSTREAM_SCALE_OUT"] == "1"
        assert "/readyz" in " ".join(worker["healthcheck"]["test"])
    assert "127.0.0.1:8080:8080" in workers[0]["ports"] and "127.0.0.1:8081:8080" in workers[1]["ports"]
    # each worker its own store, one registry for both (the same encoder versions everywhere)
    mounts = [dict(reversed(volume.split(":")[:2]) for volume in worker["volumes"]) for worker in workers]
    assert mounts[0]["/var/lib/embstream/data"] != mounts[1]["/var/lib/embstream/data"]
    assert mounts[0]["/var/lib/embstream/registry"] == mounts[1]["/var/lib/embstream/registry"]
    assert workers[1]["depends_on"]["worker-1"]["condition"] == "service_healthy"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EMBSTREAM_DATA_DIR=/var/lib/embstream/data" in dockerfile
    assert "EMBSTREAM_REGISTRY=/var/lib/embstream/registry" in dockerfile


def _exported_metric_names() -> set[str]:
    """Every metric family the worker's /metrics can show, with histogram series names."""
    from store.serving_cache import ServingCache
    from stream.metrics import Metrics

    metrics = Metrics()
    metrics.rejected["x"] += 1
    metrics.control_rejected["forged"] += 1
    metrics.written[("user", 1)] += 1
    rollout = {"staged_version": 2, "backfill": {"user": {"done": 1, "total": 2}}}
    cache = ServingCache(1 << 20)
    metrics.scale_out = lambda: {
        "owned": {"interactions": [0], "by_item": [0]},
        "ready": True,
        "changelog_lag": 0,
        "changelog_truncated": 0,
        "changelog_diverged": 0,
        "changelog_batches_applied": 1,
        "changelog_skipped": {"fenced": 1},
        "batches_fenced": 0,
    }
    text = metrics.render({"user": {1: 1}, "item": {}}, 1, 1, rollout, cache)
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def test_compose_stack_scrapes_the_worker_and_provisions_a_dashboard_of_real_metrics() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    mounted = {volume.split(":")[0] for service in (prometheus, grafana) for volume in service["volumes"]}
    for path in mounted:
        assert (ROOT / path).exists(), f"{path} is mounted but not in the repository"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"][0]["targets"] == ["worker-1:8080", "worker-2:8080"]
    assert services["worker-1"]["command"][-1] == services["worker-2"]["command"][-1] == "8080"
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/embstream.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/embstream.json").read_text())
    exported = _exported_metric_names()
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bembstream_[a-z_]+", target["expr"]))
    assert used and used <= exported, sorted(used - exported)
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "freshness", "dead letters", "versions", "rollout", "scale-out"):
        assert topic in titles
    has_compose = shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )
    if has_compose:  # the real validator where the client has the compose plugin
        checked = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_readme_quickstart_and_ci_use_the_same_scripts() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/demo" in readme and "scripts/test" in readme
    assert any(
        shlex.split(line, comments=True)[:1] == ["scripts/test"] for line in ci.splitlines() if line.strip()
    )


def test_the_client_loads_without_torch_or_the_worker() -> None:
    """A consumer of the API imports the client in a fraction of a second: no torch."""
    code = (
        "import sys; from stream.client import Client, AsyncClient; "
        "loaded = set(sys.modules); "
        "print(sorted(m for m in ('torch', 'stream.service', 'stream.ingest.worker') if m in loaded))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"


def test_every_help_text_is_plain_text() -> None:
    """``--help`` is read in a terminal: no reStructuredText from docstrings."""
    parser = build_parser()
    texts = [parser.format_help()]
    pending = [parser]
    while pending:
        for action in pending.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    texts.append(sub.format_help())
                    pending.append(sub)
    assert len(texts) > 10
    for text in texts:
        assert not re.search(r"``|:(class|func|mod|meth):|`\w", text), text


def test_every_lazily_loaded_name_of_stream_resolves() -> None:
    """``stream`` loads its names on first use: each must be found where it is said to live."""
    import stream

    for name in stream.__all__:
        assert getattr(stream, name) is not None, name
    with pytest.raises(AttributeError):
        stream.NoSuchName  # noqa: B018
