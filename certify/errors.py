"""One error type for every refusal, so the CLI can exit 2 and the API can answer 4xx."""

from __future__ import annotations


class ModelRejected(Exception):
    """An uploaded model (or its request) cannot be processed.

    ``code`` is stable and machine-readable (``snake_case``); ``message`` is for people.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}
