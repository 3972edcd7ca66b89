"""The documentation pages: ReDoc at /docs (and /docs/redoc), Swagger UI at /docs/swagger.

Both read the OpenAPI document, and every file they load is served from the installed
`openapi-ui-bundles` package (ReDoc's standalone bundle, Swagger UI's dist): no CDN, no web
font, no validator badge, so the pages work on a machine without internet, where an internal
service runs. sanic-ext's own pages load ReDoc, Swagger UI and fonts from CDNs: its ReDoc page
is given our template and script (`sanic_ext_config`), its Swagger UI page (whose OAuth2 redirect
route fetches a CDN file) is replaced by ours. The routes live under /docs, which sanic-ext
leaves out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from openapi_ui_bundles import redoc, swagger_ui
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, html

PREFIX = "/docs"
ASSETS = f"{PREFIX}/assets"
DOCUMENT = "/openapi.json"
TITLE = "Rules ingest service"

# sanic-ext serves this page at /docs and /docs/redoc (its start-up banner names its route),
# with its own placeholders for the script and the document's URL.
REDOC_TEMPLATE = Path(__file__).with_name("redoc.html")
REDOC_SCRIPT = f"{ASSETS}/redoc/redoc.standalone.js"

SWAGGER_PAGE = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>{TITLE}: Swagger UI</title>
    <link rel="stylesheet" href="{ASSETS}/swagger-ui/swagger-ui.css">
    <link rel="icon" type="image/png" href="{ASSETS}/swagger-ui/favicon-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="{ASSETS}/swagger-ui/swagger-ui-bundle.js"></script>
    <script>
      window.ui = SwaggerUIBundle({{
        url: "{DOCUMENT}",
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null
      }});
    </script>
  </body>
</html>
"""


async def _swagger(request: Request) -> HTTPResponse:
    return html(SWAGGER_PAGE)


def sanic_ext_config() -> dict[str, object]:
    """sanic-ext's settings for the pages: its ReDoc page on our template and script."""
    return {
        "oas_ui_redoc": True,
        "oas_path_to_redoc_html": str(REDOC_TEMPLATE),
        "oas_ui_redoc_cdn_url": REDOC_SCRIPT,
        "oas_ui_redoc_html_title": f"{TITLE}: API reference",
        "oas_ui_swagger": False,
    }


def blueprint() -> Blueprint:
    """Swagger UI's page and the packaged assets both pages load."""
    bp = Blueprint("docs_ui", url_prefix=PREFIX)
    bp.add_route(_swagger, "/swagger", methods=["GET"], name="swagger")
    bp.static("/assets/redoc", redoc.static_path, name="redoc_assets")
    bp.static("/assets/swagger-ui", swagger_ui.static_path, name="swagger_assets")
    return bp
