"""Chained actions at run time (SPEC §7.5): ``after``, ``results.<id>``.

A rule's action with ``after = "link"`` is recorded ``waiting`` beside the action whose
``id`` is ``link`` (same rule, same event). How the predecessor ends decides what the
dependent does, by :func:`transition`::

    predecessor succeeded                  waiting | skipped -> pending (runs now)
    predecessor dead, uncertain, dry_run,  waiting           -> skipped, note
      muted, skipped                                            "after link: uncertain"
    predecessor due again (a retry) or     skipped           -> waiting
      waiting

so a ``skipped`` dependent runs after all once an operator resolves its predecessor
as sent (``deliveries resolve --sent``) or a retry of it succeeds. Each move is
conditional on the dependent's status (:meth:`~billnotify.store.base.Chains.move_chained`),
so processes that follow the same chain at once never move a dependent twice.

When a move happens: the worker follows a delivery's dependents as soon as its
outcome is committed; the CLI does after ``resolve`` / ``retry``; and a sweep
(:meth:`ChainFollower.sweep`) at start and every little while catches the rest (a
crash between the outcome and the move, the reconciler, another process, a delivery
settled without an attempt). A dependent is made ``pending`` only once its predecessor's
success is committed, and then it is an ordinary delivery: an exactly-once one is never
sent twice (SPEC §4.1), whatever dies when.

The answer of every successful invoice action, and of any action that has an ``id``,
is kept with its delivery (:meth:`ChainFollower.keep`, before the success is committed)
and read back as ``results`` for the dependents' templates (:mod:`billnotify.chain_results`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from billnotify.config.chains import chain_of
from billnotify.config.models import Action, InvoiceActionAction, Rule
from billnotify.deliveries.base import DeliveryStatus
from billnotify.events import CloudEvent
from billnotify.store.base import Chains, Deliveries
from billnotify.store.records import ChainMove, Delivery, delivery_id

logger = logging.getLogger(__name__)

_PAGE = 500
"""Chained deliveries read per store trip by :meth:`ChainFollower.sweep`."""

MAX_RESULT_BYTES = 64 * 1024
"""An answer longer than this (as JSON) is kept as ``{"truncated": true, "bytes": N}``."""

_W, _S, _P = DeliveryStatus.WAITING, DeliveryStatus.SKIPPED, DeliveryStatus.PENDING
_STOPS = frozenset(
    {
        DeliveryStatus.DEAD,
        DeliveryStatus.UNCERTAIN,
        DeliveryStatus.DRY_RUN,
        DeliveryStatus.SKIPPED,
        DeliveryStatus.MUTED,
    }
)
_GOES_ON = frozenset(
    {
        DeliveryStatus.PENDING,
        DeliveryStatus.RETRY_SCHEDULED,
        DeliveryStatus.SENDING,
        DeliveryStatus.WAITING,
    }
)


class ChainStore(Chains, Deliveries, Protocol):
    """What following chains needs of the store."""


def transition(predecessor: DeliveryStatus, label: str, dependent_id: str) -> ChainMove | None:
    """How a dependent moves on given its predecessor's status (None: it does not)."""
    if predecessor is DeliveryStatus.SUCCEEDED:
        return ChainMove(dependent_id, (_W, _S), _P, f"after {label}: succeeded")
    if predecessor in _STOPS:
        return ChainMove(dependent_id, (_W,), _S, f"after {label}: {predecessor.value}")
    if predecessor in _GOES_ON:
        return ChainMove(dependent_id, (_S,), _W, f"after {label}: {predecessor.value}")
    return None


@dataclass(frozen=True, slots=True)
class Settled:
    """A delivery whose dependents may move on: where it comes from and how it stands."""

    rule: str
    action_index: int
    event_id: str
    status: DeliveryStatus


class ChainFollower:
    """Moves chained deliveries on, keeps answers, and gives templates their ``results``.

    Args:
        rules: the configured rules (by name, or in order).
        store: the state store.
        clock: returns the current UTC time.
    """

    def __init__(
        self,
        rules: Mapping[str, Rule] | Iterable[Rule],
        store: ChainStore,
        clock: Callable[[], datetime],
    ) -> None:
        self.rules = dict(rules) if isinstance(rules, Mapping) else {r.name: r for r in rules}
        self.store = store
        self.clock = clock
        self._dependents: dict[tuple[str, int], list[tuple[int, str]]] = {}
        self._cursor: tuple[datetime, str] | None = None
        """Where the next :meth:`sweep` goes on from."""
        for rule in self.rules.values():
            ids = {a.id: i for i, a in enumerate(rule.actions) if a.id is not None}
            for index, action in enumerate(rule.actions):
                if action.after is not None and action.after in ids:
                    key = (rule.name, ids[action.after])
                    self._dependents.setdefault(key, []).append((index, action.after))

    def __bool__(self) -> bool:
        """Whether any rule chains actions."""
        return bool(self._dependents)

    def has_dependents(self, rule: str, action_index: int) -> bool:
        """Whether an action of a rule has actions that run after it."""
        return (rule, action_index) in self._dependents

    def keeps_result(self, rule: str, action_index: int) -> bool:
        """Whether the answer of this action is kept: every invoice action's, and any
        action's with an ``id``."""
        action = self._action(rule, action_index)
        return action is not None and (
            isinstance(action, InvoiceActionAction) or action.id is not None
        )

    def chained(self, rule: str, action_index: int) -> bool:
        """Whether the action runs ``after`` another."""
        action = self._action(rule, action_index)
        return action is not None and action.after is not None

    # -- answers -----------------------------------------------------------------------
    async def keep(self, delivery: str, response: Mapping[str, Any], now: datetime) -> None:
        """Keep the answer of a delivery's successful attempt (before it is committed).

        Raises:
            StoreError: it could not be written.
        """
        text = json.dumps(response, ensure_ascii=False, default=str, sort_keys=True)
        size = len(text.encode())
        if size > MAX_RESULT_BYTES:
            text = json.dumps({"truncated": True, "bytes": size})
        await self.store.keep_result(delivery, text, now)

    async def results_for(self, rule: str, action_index: int, event_id: str) -> dict[str, Any]:
        """``results`` for an attempt of a chained action: the answer kept of every
        action it runs after, by id (one without an answer, e.g. resolved as sent by an
        operator, is absent)."""
        found = self._rules_chain(rule, action_index)
        if not found:
            return {}
        ids = {delivery_id(rule, index, event_id): label for index, label in found}
        kept = await self.store.get_results(list(ids))
        results: dict[str, Any] = {}
        for key, text in kept.items():
            try:
                results[ids[key]] = json.loads(text)
            except ValueError:
                results[ids[key]] = text
        return results

    # -- moving dependents on ----------------------------------------------------------
    async def follow(self, settled: Sequence[Settled]) -> list[ChainMove]:
        """Move the dependents of deliveries that changed status, and theirs down a
        longer chain (``a`` dead: ``b`` and ``c`` skipped); returns the moves made."""
        made: list[ChainMove] = []
        while settled:
            moves: dict[str, tuple[ChainMove, Settled]] = {}
            for item in settled:
                for index, label in self._dependents.get((item.rule, item.action_index), ()):
                    dependent = delivery_id(item.rule, index, item.event_id)
                    move = transition(item.status, label, dependent)
                    if move is not None:
                        after = Settled(item.rule, index, item.event_id, move.status)
                        moves[dependent] = (move, after)
            done = await self._move([move for move, _ in moves.values()])
            made += done
            # a dependent made pending moves its own only once it has run
            settled = [moves[m.id][1] for m in done if m.status is not _P]
        return made

    async def sweep(self, limit: int = 2000, *, whole: bool = False) -> list[ChainMove]:
        """Look at ``waiting`` / ``skipped`` deliveries' predecessors and move each on
        if it should (the catch-all behind :meth:`follow`); returns the moves made.

        A call looks at up to ``limit`` of them, going on from where the last call
        stopped and starting over at the end, so many old ``skipped`` rows never keep
        the others from being looked at; ``whole`` goes through all of them (at start).
        """
        if not self:
            return []
        made: list[ChainMove] = []
        seen = 0
        while whole or seen < limit:
            page = await self.store.chained_deliveries(_PAGE, after=self._cursor)
            self._cursor = (page[-1].created_at, page[-1].id) if len(page) == _PAGE else None
            made += await self._sweep_page(page)
            seen += len(page)
            if self._cursor is None:
                break
        return made

    async def _sweep_page(self, chained: Sequence[Delivery]) -> list[ChainMove]:
        wanted: set[str] = set()
        pairs: list[tuple[str, str, str]] = []  # (predecessor id, dependent id, label)
        for row in chained:
            rule = self.rules.get(row.rule)
            action = self._action(row.rule, row.action_index)
            if rule is None or action is None or action.after is None:
                continue  # its rule changed since: it stays as it is (README)
            index = next((i for i, a in enumerate(rule.actions) if a.id == action.after), None)
            if index is None:
                continue
            before = delivery_id(row.rule, index, row.event_id)
            wanted.add(before)
            pairs.append((before, row.id, action.after))
        if not pairs:
            return []
        status = {d.id: d.status for d in await self.store.get_deliveries(sorted(wanted))}
        moves = [
            move
            for before, dependent, label in pairs
            if before in status and (move := transition(status[before], label, dependent))
        ]
        return await self._move(moves)

    async def _move(self, moves: Sequence[ChainMove]) -> list[ChainMove]:
        if not moves:
            return []
        moved = set(await self.store.move_chained(moves, self.clock()))
        made = [move for move in moves if move.id in moved]
        for move in made:
            logger.info("delivery %s: %s -> %s", move.id, move.note, move.status.value)
        return made

    def _action(self, rule: str, action_index: int) -> Action | None:
        found = self.rules.get(rule)
        if found is None or not 0 <= action_index < len(found.actions):
            return None
        return found.actions[action_index]

    def _rules_chain(self, rule: str, action_index: int) -> list[tuple[int, str]]:
        found = self.rules.get(rule)
        if found is None or not 0 <= action_index < len(found.actions):
            return []
        return _chain(found, action_index)


def _chain(rule: Rule, action_index: int) -> list[tuple[int, str]]:
    """(index, id) of every action ``rule.actions[action_index]`` runs after."""
    return [(index, str(rule.actions[index].id)) for index in chain_of(rule.actions, action_index)]


def sample_results(rule: Rule, action_index: int, event: CloudEvent) -> dict[str, Any]:
    """Placeholder ``results`` for ``render`` and dry runs: what the answer of each
    action ``rule.actions[action_index]`` runs after looks like, marked ``sample``."""
    return {
        label: sample_result(rule.actions[index], event)
        for index, label in _chain(rule, action_index)
    }


def sample_result(action: Action, event: CloudEvent) -> dict[str, Any]:
    """A placeholder for the answer an action would get, in the shape seed 002 documents
    (``render`` and dry runs show a chained action with it)."""
    if isinstance(action, InvoiceActionAction):
        if action.action == "generateDownloadLink":
            return {
                "success": True,
                "download_url": "https://billing.example.com/download/invoice/SAMPLE-TOKEN",
                "token": "SAMPLE-TOKEN",
                "expires_at": "2030-01-01T00:00:00+00:00",
                "max_uses": action.params.get("maxUses", 1),
                "sample": True,
            }
        if action.action in ("email", "emailCdrs"):
            return {"success": True, "message": "(sample answer)", "sample": True}
        invoice = event.data.get("object")
        return {**(invoice if isinstance(invoice, dict) else {}), "sample": True}
    if action.type == "webhook":
        return {"status": 200, "body": {}, "sample": True}
    if action.type == "email":
        return {"reply": "250 OK (sample)", "message_id": "<sample@billnotify>", "sample": True}
    return {"sample": True}
