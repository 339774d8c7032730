"""The lipcert HTTP service: a Flask API over Redis records, a content-addressed artifact store and Celery workers.

``service.app.create_app`` builds the Flask application; the modules without Flask (settings, store, records,
tokens, signing, datasets) are shared with the worker.
"""
