"""Deliveries: the ledger's policy, the worker that attempts them, retries, reconciliation.

- :mod:`~billnotify.deliveries.base`: ``DeliveryStatus``, ``Outcome``, ``AttemptResult``;
- :mod:`~billnotify.deliveries.policy`: attempt result -> next status (pure);
- :mod:`~billnotify.deliveries.worker`: :class:`DeliveryWorker` attempts due deliveries,
  fed by :mod:`~billnotify.deliveries.due` through the slots of
  :mod:`~billnotify.deliveries.slots`; outcomes commit in groups
  (:mod:`~billnotify.deliveries.outcomes`);
- :mod:`~billnotify.deliveries.reconcile`: settles uncertain invoice emails from the platform;
- :mod:`~billnotify.deliveries.ledger`: small helpers over the ledger.

Nothing is imported here, so that the store and the actions can import
:mod:`~billnotify.deliveries.base` without pulling in the worker.
"""
