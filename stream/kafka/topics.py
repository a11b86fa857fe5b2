"""The topics embstream reads and writes, named from the interactions topic, and created
where missing."""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.errors import BrokerError

__all__ = ["by_item_topic", "changelog_topic", "ensure_topics", "scale_out_topics"]


def by_item_topic(interactions_topic: str) -> str:
    """Item events of each batch, bundled per item partition (scale-out)."""
    return f"{interactions_topic}.by-item"


def changelog_topic(source_topic: str) -> str:
    """What workers applied from ``source_topic``, for every other worker (scale-out)."""
    return f"{source_topic}.changelog"


def scale_out_topics(interactions_topic: str, partitions: int) -> dict[str, int]:
    """The topics scale-out adds, with their partition counts (all as many as ``interactions``:
    a partition of each moves together with the source partition it belongs to)."""
    by_item = by_item_topic(interactions_topic)
    return {
        by_item: partitions,
        changelog_topic(interactions_topic): partitions,
        changelog_topic(by_item): partitions,
    }


def ensure_topics(
    servers: list[str], topics: dict[str, int], timeout_s: float = 20.0, **client_config: object
) -> None:
    """Create each ``topic: partitions`` that does not exist yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=servers, client_id="embstream-admin", **client_config)
            break
        except Exception as exc:  # kafka-python raises NoBrokersAvailable and others
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach the broker at {','.join(servers)}: {exc}") from exc
            time.sleep(0.5)
    try:
        for name, count in topics.items():  # one at a time: an existing topic fails alone
            topic = NewTopic(
                name,
                num_partitions=count,
                replication_factor=1,
                topic_configs={"retention.ms": str(7 * 86_400_000)},
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic])
    finally:
        admin.close()
