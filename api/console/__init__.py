"""The web console at ``/ui``: server-rendered pages (Jinja2) over the same service the JSON API uses.

``api/console/routes.py`` has the pages, ``views.py`` turns records and metrics into what the templates show,
``templates/`` and ``static/`` (CSS, one small script for live progress) are served by the app itself: the
console loads nothing from another origin. Sessions: :mod:`api.session`.

The navigation is :data:`NAV`: (label, path) pairs; a page added later (datasets, models) appends to it.
"""

from api.console.routes import NAV, install

__all__ = ["NAV", "install"]
