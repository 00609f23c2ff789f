"""The operator console (SPEC §7.4): server-rendered pages on the service's HTTP port.

``site.py`` holds the routes, the login and the live stream; ``auth.py`` sessions, CSRF
and the security headers; ``overview.py`` what the overview shows; ``pages.py`` the other
pages and the operator actions (the CLI's own functions). Templates and the one script
and stylesheet live beside them: nothing to build.
"""

from billnotify.console.site import Console

__all__ = ["Console"]
