"""The lipcert HTTP service: a Flask API over Redis records, a content-addressed artifact store and Celery workers.

``service.app.create_app`` builds the Flask application; ``service.core`` holds what the API and the workers share,
with neither Flask nor Celery. This module imports nothing, so loading the core never loads Flask.
"""
