"""python-tuf and securesystemslib names, imported from the modules that define them.

The public modules (``tuf.api.metadata``, ``tuf.ngclient``, ``securesystemslib.signer``)
re-export these without an ``__all__`` mypy can read, so ``mypy --strict`` rejects
importing them from there; the objects are the same.
"""

from securesystemslib.signer._crypto_signer import CryptoSigner
from securesystemslib.signer._key import Key
from securesystemslib.signer._signer import Signer
from tuf.api._payload import MetaFile, Root, Signed, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.metadata import Metadata
from tuf.ngclient.config import UpdaterConfig as NgConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

__all__ = [
    "CryptoSigner",
    "FetcherInterface",
    "Key",
    "MetaFile",
    "Metadata",
    "NgConfig",
    "Root",
    "Signed",
    "Signer",
    "Snapshot",
    "TargetFile",
    "Targets",
    "Timestamp",
    "Updater",
]
