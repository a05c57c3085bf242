"""Typed serving errors, each carrying the HTTP status and gRPC status code it maps to.

The protocol core raises these; the REST and gRPC front ends translate them one to one, so
both protocols answer the same request with the same class of error. gRPC codes are kept as
names (``"INVALID_ARGUMENT"``) so this module does not import grpc.
"""

from __future__ import annotations

from typing import ClassVar

from edgeai.errors import EdgeAIError


class ServingError(EdgeAIError):
    """Base of every error a serving request can end in."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"


class InvalidRequestError(ServingError, ValueError):
    """The request does not match the model: dtype, shape, size, names, or malformed body."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFoundError(ServingError, LookupError):
    """No such model, or no such version of it."""

    http_status = 404
    grpc_code = "NOT_FOUND"

    def __str__(self) -> str:  # LookupError would repr() the message otherwise
        return str(self.args[0])


class PayloadTooLargeError(ServingError, ValueError):
    """The request body is over ``max_request_bytes``."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class QueueFullError(ServingError, RuntimeError):
    """The model's batching queue is full; the client should back off and retry.

    429, not 503: the server is healthy and the condition is the client's load, which is
    what 429 means (RFC 6585 §4); gRPC's RESOURCE_EXHAUSTED covers both.
    """

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class OverloadedError(ServingError, RuntimeError):
    """Requests in flight already hold ``max_inflight_bytes``; the client should retry.

    A bound on memory, not a fault: like a full queue it is load the client can back off
    from, so 429 / RESOURCE_EXHAUSTED rather than a 5xx.
    """

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class RequestTimeoutError(ServingError, TimeoutError):
    """The client did not send its request body within ``body_timeout_s``."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class UnauthenticatedError(ServingError, PermissionError):
    """A bearer token is configured and the request's is missing or wrong."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class ModelNotReadyError(ServingError, RuntimeError):
    """No model is loaded (yet), or the server is draining."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class InferenceFailedError(ServingError, RuntimeError):
    """The runtime failed on a request that passed validation: a server-side fault."""

    http_status = 500
    grpc_code = "INTERNAL"


MAX_MESSAGE_CHARS = 1000


def client_message(exc: BaseException) -> str:
    """The error's message for the client, cut to :data:`MAX_MESSAGE_CHARS`.

    Messages quote what the client sent (a shape, a name); a request can make those as
    long as its body, and a gRPC status message travels in a header (8 KiB by default).
    """
    text = str(exc)
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    tail = f" ... ({len(text)} chars)"
    return text[: MAX_MESSAGE_CHARS - len(tail)] + tail
