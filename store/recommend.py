"""Where a recommendation resolves a version: the user's vector and the item index of one
version, never a mix.

The user's vector is resolved like a lookup (:func:`store.lookup.resolve_many`: the serving
version by default, an older one natively or carried back from the serving version), then
searched against the item index of exactly the version it was resolved at. Items the user
interacted with recently (the window kept in the user's state) are left out unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.features import UserState
from store.errors import IndexBuildingError, IndexMissingError, InvalidArgumentError
from store.item_index import ItemIndex, Neighbours
from store.item_indexes import ItemIndexes
from store.lookup import CarryProvider, resolve_many
from store.popular import PopularItems
from store.vector_store import VersionedVectorStore

__all__ = ["MAX_K", "MAX_RECOMMENDATION_USERS", "Recommendation", "recommend_many"]

MAX_K = 1_000
#: Users per batch request: each is one index search of up to k + window rows.
MAX_RECOMMENDATION_USERS = 1_000


@dataclass(frozen=True)
class Recommendation:
    """The ``k`` best items for one user at ``version`` (user vector and items alike)."""

    user_id: str
    version: int
    #: ``native``, ``aligned`` or ``forward``: how the user's vector of ``version`` was
    #: obtained; ``none`` for a user with no vector (a fallback answer).
    user_vector: str
    items: Neighbours
    #: Items left out because the user interacted with them recently.
    excluded: int
    #: ``popular`` when the user has no vector and the answer is the most popular items.
    fallback: str | None = None


def recommend_many(
    store: VersionedVectorStore,
    indexes: ItemIndexes,
    user_ids: Sequence[str],
    k: int,
    version: int | None = None,
    carry: CarryProvider | None = None,
    exclude_seen: bool = True,
    popular: PopularItems | None = None,
) -> tuple[int, list[Recommendation | None]]:
    """The top ``k`` items for each user, all at one version. A user with no vector to give
    gets the most ``popular`` items that have a vector at that version (``fallback``), or
    ``None`` without ``popular``. Raises :class:`IndexMissingError` when that version keeps no index,
    :class:`IndexBuildingError` while its index is built, and
    :class:`InvalidArgumentError` for a ``k`` out of range."""
    if not 1 <= k <= MAX_K:
        raise InvalidArgumentError("k", f"k must be an integer from 1 to {MAX_K}")
    answered, users = resolve_many(store, "user", list(user_ids), version, carry)
    index = indexes.index(answered)
    if index is None:
        status = indexes.status().get(answered)
        if status is not None:
            raise IndexBuildingError(
                f"the item index of version {answered} is being built "
                f"({status.built_items} of {status.build_total} items scanned); try again shortly",
            )
        raise IndexMissingError(
            f"version {answered} has no item index (indexed versions: {indexes.versions}; "
            "EMBSTREAM_INDEX_VERSIONS bounds how many are kept)",
        )
    states = store.get_states("user", list(user_ids)) if exclude_seen else [None] * len(user_ids)
    results: list[Recommendation | None] = []
    for user_id, user, state in zip(user_ids, users, states, strict=True):
        if user is None:
            results.append(None if popular is None else _popular(user_id, answered, index, popular, k))
            continue
        seen = _seen_items(state)
        found = index.search(user.vector, k, exclude=seen)
        results.append(Recommendation(user.id, answered, user.source, found, len(seen)))
    return answered, results


def _popular(user_id: str, version: int, index: ItemIndex, popular: PopularItems, k: int) -> Recommendation:
    found = popular.top(k, index.__contains__)
    items = Neighbours([item_id for item_id, _ in found], [score for _, score in found])
    return Recommendation(user_id, version, "none", items, 0, fallback="popular")


def _seen_items(state: bytes | None) -> frozenset[str]:
    """The item ids in a user's window of recent interactions (none for a damaged state)."""
    if state is None:
        return frozenset()
    try:
        return frozenset(UserState.from_bytes(state).item_ids)
    except Exception:  # a damaged state must not fail the read: nothing to leave out
        return frozenset()
