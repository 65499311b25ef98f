"""Helper for tests/test_bundle.py: overwrite a bundle slowly until killed.

Usage: python slow_bundle_writer.py DEST

Opens a BundleWriter over DEST (overwrite=True), writes the id maps and the start of a
big file, prints ``WRITING`` (flushed) and then keeps appending to the big file in a loop.
The test SIGKILLs it while it is inside the writer. If nobody kills it, it gives up after
about a minute without committing.
"""

from __future__ import annotations

import sys
import time

from recsys_export.bundle import BundleWriter
from recsys_export.core.ids import IdMap


def main() -> int:
    dest = sys.argv[1]
    chunk = b"\xab" * (64 * 1024)
    limit = 32 * 1024 * 1024  # stop growing the file here (disk safety if never killed)
    with BundleWriter(dest, overwrite=True) as writer:
        writer.write_id_maps(IdMap(["new-u"], "user"), IdMap(["new-i"], "item"))
        big = writer.add("data/big.bin", role="data:big")
        with open(big, "wb") as fh:
            fh.write(chunk)
            fh.flush()
            print("WRITING", flush=True)
            deadline = time.monotonic() + 60
            written = len(chunk)
            while time.monotonic() < deadline:
                if written < limit:
                    fh.write(chunk)
                    fh.flush()
                    written += len(chunk)
                time.sleep(0.005)  # slow writer; the test never sleeps
        raise SystemExit("slow_bundle_writer was not killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
