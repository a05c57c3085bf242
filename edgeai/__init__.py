"""edgeai: federated learning with differential privacy, compiled and served at the edge."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeai")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
