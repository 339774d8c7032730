"""The browser dashboard: upload a model and a dataset, start a job, watch it, open its report page.

Server-rendered (a Jinja2 template) with a small vanilla script served from ``static/``; nothing is loaded from
elsewhere. The page talks to the same /v1 JSON API as every other client, with the user's token kept in
sessionStorage. Reports are turned into the HTML report page by ``POST /v1/render`` (bearer token required), which
verifies the envelope against the service's public keys first, so the page can say who signed it.

Register it in the app factory with ``app.register_blueprint(service.ui.blueprint)``.
"""

from service.ui.views import blueprint

__all__ = ["blueprint"]
