"""Errors with a stable machine-readable code, so the CLI can exit 2 and the API can answer 4xx."""

from __future__ import annotations


class CodedError(Exception):
    """An error with a stable ``code`` (``snake_case``) and a ``message`` for people."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class ModelRejected(CodedError):
    """An uploaded model (or its dataset, configuration or request) cannot be processed."""
