"""What both front ends share: the model holder, the batcher, metrics, auth and caches."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from edgeai import __version__
from edgeai.serving.batcher import MicroBatcher
from edgeai.serving.budget import ByteBudget
from edgeai.serving.errors import ModelNotReadyError, UnauthenticatedError
from edgeai.serving.metrics import ServingMetrics
from edgeai.serving.model import ModelHolder, ServedModel
from edgeai.serving.protocol import Array, InferRequest, resolve_model

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVER_NAME = "edgeai"
SERVER_VERSION = __version__
EXTENSIONS: tuple[str, ...] = ()


class ServingCore:
    """Protocol-independent request handling shared by the REST and gRPC front ends."""

    def __init__(
        self,
        holder: ModelHolder,
        batcher: MicroBatcher,
        metrics: ServingMetrics,
        token: str | None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.holder = holder
        self.budget = budget if budget is not None else ByteBudget(2**62)
        self._bugs_seen: set[tuple[str, str]] = set()
        self.batcher = batcher
        self.metrics = metrics
        self._token = None if token is None else f"Bearer {token}".encode()
        self.draining = False
        self._seen: ServedModel | None = None
        self._cache: dict[str, tuple[ServedModel, Any]] = {}

    @property
    def auth_required(self) -> bool:
        """Whether requests other than health checks need a bearer token."""
        return self._token is not None

    def authorize(self, header: str | None) -> None:
        """Check an ``authorization`` header value when a token is configured."""
        if self._token is None:
            return
        if header is None:
            raise UnauthenticatedError("missing 'authorization: Bearer <token>'")
        # aiohttp decodes header bytes that are not UTF-8 to lone surrogates; this gives
        # the bytes back, so any header compares (and fails) instead of raising.
        try:
            got = header.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise UnauthenticatedError("malformed authorization header") from None
        # Constant-time comparison: the token must not leak through response timing.
        if not hmac.compare_digest(got, self._token):
            raise UnauthenticatedError("wrong bearer token")

    def live(self) -> bool:
        """The server answers requests."""
        return True

    def ready(self) -> bool:
        """A model is loaded and the server is not draining."""
        return not self.draining and self.current() is not None

    def current(self) -> ServedModel | None:
        """The model for a new request; keeps the model-info metric in step with swaps."""
        model = self.holder.current()
        if model is not self._seen:
            self._seen = model
            self.metrics.model(model)
        return model

    def model(self, name: str, version: str) -> ServedModel:
        """Resolve the model (and version) a request names; typed errors otherwise."""
        if self.draining:
            raise ModelNotReadyError("the server is shutting down")
        return resolve_model(self.current(), name, version)

    def model_ready(self, name: str, version: str) -> bool:
        """Whether that model and version is served and ready (unknown ones raise)."""
        resolve_model(self.current(), name, version)
        return not self.draining

    async def infer(self, request: InferRequest) -> dict[str, Array]:
        """Run ``request`` through the batcher; every output by name."""
        outputs = await self.batcher.submit(request)
        return dict(zip(request.model.output_names, outputs, strict=True))

    def cached(self, kind: str, model: ServedModel, build: Callable[[ServedModel], T]) -> T:
        """Return ``build(model)``, computed once per model (metadata responses)."""
        hit = self._cache.get(kind)
        if hit is None or hit[0] is not model:
            hit = self._cache[kind] = (model, build(model))
        value: T = hit[1]
        return value

    def report_bug(self, where: str, exc: BaseException) -> None:
        """Log a fault of ours: a traceback the first time per place and type, then one line.

        A request that trips a bug can be repeated by anyone; a traceback each time would
        let them flood the log (and the disk behind it).
        """
        key = (where, type(exc).__name__)
        if key not in self._bugs_seen and len(self._bugs_seen) < 256:
            self._bugs_seen.add(key)
            log.error("%s failed", where, exc_info=exc)
        else:
            log.error("%s failed: %s: %s", where, type(exc).__name__, one_line(exc))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``str(exc)`` on one line, cut to ``limit`` characters (log lines stay lines)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
