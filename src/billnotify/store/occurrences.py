"""Which events of a commit the log takes, and under which id: the rule every backend keeps.

An event id names a transition (``A -> B`` of one record). The log never holds an id
twice: an event already logged is skipped. When the same transition happens again
(``A -> B -> A -> B``) and its record is written in the same commit, it is a new
occurrence, logged under the id salted with the record's new snapshot version
(``<id>_<version>``), which a crash-and-retry of that commit reproduces exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

EventKey = tuple[str, str, str]
"""An event's id, the entity and the id of its record."""


def record_key(entity: str, object_id: str) -> str:
    """The key of a record in the ``versions`` of :func:`candidate_ids` and :func:`place`."""
    return f"{entity}/{object_id}"


def candidate_ids(events: Sequence[EventKey], versions: Mapping[str, int]) -> list[str]:
    """Every id the events may be logged under: each own id and, where its record was
    written in the commit, the salted one (the ids to look up in the log)."""
    ids: list[str] = []
    for id_, entity, object_id in events:
        ids.append(id_)
        version = versions.get(record_key(entity, object_id))
        if version is not None:
            ids.append(f"{id_}_{version}")
    return ids


def place(
    events: Sequence[EventKey], versions: Mapping[str, int], taken: set[str]
) -> list[tuple[int, str]]:
    """The events to append, as (index in ``events``, id to log them under), in order.

    Args:
        events: the commit's events.
        versions: ``record_key`` -> the snapshot version the commit wrote.
        taken: the ids among :func:`candidate_ids` already in the log; the ids placed
            are added to it.
    """
    placed: list[tuple[int, str]] = []
    for n, (id_, entity, object_id) in enumerate(events):
        if id_ in taken:
            version = versions.get(record_key(entity, object_id))
            if version is None:
                continue
            id_ = f"{id_}_{version}"
            if id_ in taken:
                continue
        taken.add(id_)
        placed.append((n, id_))
    return placed
