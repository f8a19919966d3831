"""Offline API documentation: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with every script and style
served by this app, so both render on a machine without internet.

FastAPI's own pages load their JavaScript from a CDN. This follows FastAPI's documented self-hosting recipe
(``docs_url=None, redoc_url=None``, the static files mounted, ``get_swagger_ui_html`` /
``get_redoc_html`` pointed at them); the assets are the Swagger UI 5 and ReDoc 2 bundles that the
``fastapi-offline`` package ships in its wheel (we use only its files, not its app factory).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static/docs"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Both pages may load only from this origin (their one inline script starts the bundle); ReDoc's footer logo
# lives on its vendor's CDN, so the footer is hidden and the CSP would block the image anyway.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "base-uri 'none'; frame-ancestors 'self'")


def assets_dir() -> Path:
    """The directory of the vendored bundles (swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js)."""
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Mount the assets and add the three documentation routes to ``app`` (created with docs_url=None and
    redoc_url=None)."""
    app.mount(STATIC_URL, StaticFiles(directory=assets_dir()), name="docs-static")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
                                   swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no online validator
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png", with_google_fonts=False)
        hide = b'a[href*="redocly.com"]{display:none !important}</style>'
        body = bytes(page.body).replace(b"</style>", hide, 1)
        return HTMLResponse(body, headers={"Content-Security-Policy": DOCS_CSP})
