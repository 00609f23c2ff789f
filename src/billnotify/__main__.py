"""Allow ``python -m billnotify``."""

from billnotify.cli import main

raise SystemExit(main())
