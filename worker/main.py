"""``celery -A worker.main:app worker``: the worker app with the settings of the environment (read here only)."""

from service.core.settings import Settings
from worker.celery_app import make_celery

app = make_celery(Settings.from_env())
