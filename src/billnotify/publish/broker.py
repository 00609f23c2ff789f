"""An embedded MQTT broker (amqtt) for ``billnotify demo`` and ``url = "embedded://..."``.

It lets the whole product run on one machine with no outside services. It is a
convenience, not a production broker; its known limits (amqtt 0.12):

- **MQTT 3.1.1 only.** A CONNECT with protocol level 5 is refused, so the publisher
  must use ``protocol = 4`` against it (``[mqtt] protocol = 4``).
- **Offline queueing only for authenticated clients.** amqtt queues QoS 1/2
  messages for a disconnected persistent session (``clean_session = False``) only
  when the session is not anonymous. With ``allow_anonymous=True`` (the default)
  every client counts as anonymous, so a subscriber that is away misses messages;
  with ``allow_anonymous=False`` any client that sends a username (no password
  check) is accepted and gets queueing, and clients without one are refused.
- **Nothing persists.** Retained messages and sessions live in memory: a restart
  forgets them (the publisher re-publishes events from its position, but retained
  state only when records change again).
- **Slow.** Expected at about half mosquitto's speed; ``python -m bench mqtt``
  measured the publisher at roughly a fifth of its mosquitto rate (about 2,000 vs
  10,000 events/s, QoS 1, 2 CPUs) once amqtt queues for a subscriber.
- No TLS here (amqtt can, but the demo does not need it).

amqtt comes with the ``demo`` extra (``pip install 'billnotify[demo]'``), imported
only when a broker starts. It binds to ``host`` explicitly, loopback by default, so a demo never exposes a
broker on the network by accident. amqtt's per-connection INFO logging is turned
down to WARNING.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Any

from billnotify.errors import BusError
from billnotify.extras import demo_extra

logger = logging.getLogger(__name__)

_NOISY_LOGGERS = ("amqtt", "transitions")


def _quiet_amqtt() -> None:
    """Turn amqtt's chatty loggers down unless the operator configured them."""
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if noisy.level == logging.NOTSET:
            noisy.setLevel(logging.WARNING)


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker on ``host:port``.

    Args:
        host: the address to bind (``127.0.0.1`` by default; never all interfaces
            unless asked for).
        port: the TCP port; 0 picks a free one (read :attr:`port` after start).
        allow_anonymous: accept clients without a username (see the module's limits).

    Example::

        async with EmbeddedBroker(port=0) as broker:
            print(broker.url)   # mqtt://127.0.0.1:54321
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 1883, *, allow_anonymous: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self._allow_anonymous = allow_anonymous
        self._broker: Any = None

    @property
    def running(self) -> bool:
        """Whether the broker is serving."""
        return self._broker is not None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the listener."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    async def start(self) -> None:
        """Start serving.

        Raises:
            BusError: the address cannot be bound (in use, not local, ...), or amqtt is
                not installed (the ``demo`` extra).
        """
        if self._broker is not None:
            return
        with demo_extra("embedded:// MQTT", BusError):
            from amqtt.broker import Broker
            from amqtt.errors import BrokerError
        _quiet_amqtt()

        bind_host = f"[{self.host}]" if ":" in self.host else self.host
        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{bind_host}:{self.port}"},
            },
            # Only authentication: no $SYS publisher, no per-packet logging plugins.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                    "allow_anonymous": self._allow_anonymous
                },
            },
        }
        broker = Broker(config)
        try:
            await broker.start()
        except BrokerError as exc:
            raise BusError(f"embedded MQTT broker cannot listen on {self.url}: {exc}") from exc
        self._broker = broker
        self.port = _bound_port(broker, self.port)
        logger.info("embedded MQTT broker (MQTT 3.1.1) listening on %s", self.url)

    async def stop(self) -> None:
        """Disconnect every client and stop listening."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await broker.shutdown()
        except Exception as exc:  # amqtt raises assorted errors while tearing down
            logger.warning("embedded MQTT broker did not shut down cleanly: %s", exc)
        logger.info("embedded MQTT broker on %s stopped", self.url)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _bound_port(broker: Any, requested: int) -> int:
    """The port the listener actually got (differs from ``requested`` when it is 0)."""
    for server in getattr(broker, "_servers", {}).values():
        for sock in getattr(server.instance, "sockets", None) or ():
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
    return requested
