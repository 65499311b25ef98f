"""The bundle format, torch-free: the manifest schema (:mod:`.schema`), file names,
hashing and the seen-items CSR (:mod:`.files`), the atomic writer (:mod:`.writer`) and
the verified reader (:mod:`.load`). The names below are the package's public ones.
"""

from recsys_export.bundle.files import enclosing_bundle, sha256_file
from recsys_export.bundle.load import Bundle, dir_identity, update_bundle
from recsys_export.bundle.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    RESERVED_KEYS,
    Manifest,
)
from recsys_export.bundle.writer import BundleWriter

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "RESERVED_KEYS",
    "Bundle",
    "BundleWriter",
    "Manifest",
    "dir_identity",
    "enclosing_bundle",
    "sha256_file",
    "update_bundle",
]
