"""Celery workers that run the certify pipeline for queued jobs (Redis is the broker and the result store)."""
