"""The optional ``demo`` extra: what needs it, and the error when it is not installed.

A production install (``pip install billnotify``) has no ``aiosmtpd``, ``amqtt`` or
``rich``: they serve the test bench only (``billnotify demo``, its sinks and live view,
and the embedded broker of ``url = "embedded://..."``), and ``pip install
'billnotify[demo]'`` adds them. Nothing on the product's import path imports them at
module level; what does imports them inside :func:`demo_extra`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from billnotify.errors import BillnotifyError

DEMO_MODULES = frozenset({"aiosmtpd", "amqtt", "rich"})
"""The top-level modules the ``demo`` extra installs."""
INSTALL_DEMO = "pip install 'billnotify[demo]'"


@contextlib.contextmanager
def demo_extra(feature: str, error: type[BillnotifyError] = BillnotifyError) -> Iterator[None]:
    """Imports inside this block that need the demo extra fail as ``error``, saying so.

    Args:
        feature: what needs the extra, as the message names it (``"billnotify demo"``).
        error: the exception raised when one of :data:`DEMO_MODULES` is missing.

    Raises:
        BillnotifyError: (``error``) ``"<feature> needs the demo extra: pip install ..."``.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        module = (exc.name or "").partition(".")[0]
        if module not in DEMO_MODULES:
            raise
        raise error(
            f"{feature} needs the demo extra: {INSTALL_DEMO} ({module} is not installed)"
        ) from None
