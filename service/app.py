"""The Flask application factory."""

from __future__ import annotations

import logging

import redis
from flask import Flask
from flask_smorest import Api

from service import auth, problems
from service.context import Services
from service.core.queue import JobQueue, celery_config
from service.core.records import Records, connect
from service.core.settings import Settings
from service.core.signing import public_keys
from service.core.store import LocalArtifactStore
from service.core.tokens import TokenRegistry
from service.schemas import EnvelopeSchema, ProblemSchema


class ProblemApi(Api):
    """flask-smorest, with its error bodies replaced by problem+json, and documented so."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self):
        self.DEFAULT_RESPONSE_CONTENT_TYPE = "application/problem+json"  # for the error responses only
        try:
            super()._register_responses()
        finally:
            del self.DEFAULT_RESPONSE_CONTENT_TYPE

    def handle_http_exception(self, error):
        return problems.from_http_exception(error)


def celery_queue(settings: Settings) -> JobQueue:
    """The queue jobs go to: a Celery app that only sends (by task name; the workers register the task)."""
    from celery import Celery

    sender = Celery("lipcert")
    sender.conf.update(celery_config(settings))
    return JobQueue(settings, sender)


def create_app(settings: Settings | None = None, queue=None) -> Flask:
    """Build the API for ``settings`` (default: from the environment); ``queue`` defaults to the Celery queue."""
    settings = settings or Settings.from_env()
    app = Flask("lipcert")
    app.config.update(
        API_TITLE="lipcert",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_FORM_MEMORY_SIZE=64 * 1024,
        JSON_SORT_KEYS=False,
    )
    tokens = TokenRegistry.from_sources(settings.tokens, settings.tokens_file)
    if queue is None:
        queue = celery_queue(settings)
    records = Records(connect(settings.redis_url))
    try:
        records.index_existing_jobs()  # a store from before the listing indexes; a no-op afterwards
    except redis.exceptions.RedisError as e:  # Redis away at start: the API answers 503 until it is back
        logging.getLogger("lipcert.api").warning("job listing indexes not checked: %s", e)
    app.extensions["lipcert"] = Services(
        settings=settings,
        records=records,
        store=LocalArtifactStore(settings.store_dir),
        tokens=tokens,
        queue=queue,
        public_keys=public_keys(settings),
    )
    if not len(tokens):
        logging.getLogger("lipcert.api").warning("no API tokens are configured: every /v1 request will get 401")

    api = ProblemApi(app, spec_kwargs={"components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"}}}, "security": [{"bearer": []}]})
    api.spec.components.schema("Envelope", schema=EnvelopeSchema)
    from service.api import datasets, health, jobs, keys, models, properties, reports

    for module in (models, datasets, properties, jobs, reports, keys, health):
        api.register_blueprint(module.blp)
    from service.ui import blueprint as dashboard

    app.register_blueprint(dashboard)  # the browser dashboard (/ui/), a client of the same /v1 API
    problems.register(app)
    app.before_request(auth.authenticate)
    return app
