"""Run a bundle on a device: ONNX Runtime sessions with ordered providers and fallback."""

from edgeai.runtime.session import (
    Fallback,
    LoadedSession,
    RuntimeLoadError,
    create_session,
    provider_options,
)

__all__ = ["Fallback", "LoadedSession", "RuntimeLoadError", "create_session", "provider_options"]
