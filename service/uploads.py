"""Streaming an upload into the artifact store: raw body or multipart, hashed as it arrives, capped in size.

A declared Content-Length over the cap is refused before the body is read; a chunked body is counted as it
streams and refused as soon as it passes the cap.
"""

from __future__ import annotations

from flask import request

from service.core.store import ArtifactStore, Stored, TooLarge
from service.problems import ApiProblem

CHUNK = 1024 * 1024
RAW_TYPES = ("application/octet-stream", "application/x-protobuf", "application/onnx", "application/zip",
             "application/x-npz", "")


def _chunks(stream):
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        yield chunk


def _too_large(limit: int) -> ApiProblem:
    # the rest of the body is never read, so the connection cannot carry another request
    return ApiProblem(413, "payload_too_large", f"the upload is over the cap of {limit} bytes",
                      headers={"Connection": "close"})


def receive(store: ArtifactStore, kind: str, max_bytes: int) -> tuple[Stored, str | None]:
    """Store the request's file; returns (stored, filename from a multipart part if any)."""
    length = request.content_length
    if length is not None and length > max_bytes + (64 * 1024 if request.mimetype == "multipart/form-data" else 0):
        raise _too_large(max_bytes)
    filename = None
    if request.mimetype == "multipart/form-data":
        request.max_content_length = max_bytes + 64 * 1024
        upload = request.files.get("file")
        if upload is None:
            raise ApiProblem(400, "missing_file", "send the file in a multipart part named 'file'",
                             errors={"file": ["Missing data for required field."]})
        filename, stream = upload.filename, upload.stream
    elif request.mimetype in RAW_TYPES:
        stream = request.stream
    else:
        raise ApiProblem(415, "unsupported_media_type",
                         f"send the bytes as application/octet-stream or multipart/form-data, not {request.mimetype}")
    try:
        return store.put_stream(kind, _chunks(stream), max_bytes), filename
    except TooLarge:
        raise _too_large(max_bytes) from None
