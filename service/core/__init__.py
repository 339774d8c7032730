"""What the API and the workers share, with neither Flask nor Celery: settings, job records, the artifact store,
tokens, signing keys, webhooks and the job queue's message contract.

The API (``service.app``, ``service.api``, ``service.ui``) and the workers (``worker``) both import from here; this
package imports from neither, so each side can change without touching the other.
"""
