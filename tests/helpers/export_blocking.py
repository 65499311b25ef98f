"""Export a checkpoint over an existing bundle, pausing mid-write until killed.

Usage: python export_blocking.py CHECKPOINT DEST

Prints "WRITING" once the first ONNX graph has been written into the temporary
directory, then blocks reading stdin; the test kills it with SIGKILL at that point.
"""

import sys

from recsys_export.export import build as export
from recsys_export.models.checkpoint import load_checkpoint

_original = export.write_onnx


def _pausing_write_onnx(*args, **kwargs):
    written = _original(*args, **kwargs)
    print("WRITING", flush=True)
    sys.stdin.readline()  # blocks until the test kills us
    return written


export.write_onnx = _pausing_write_onnx
export.export_bundle(load_checkpoint(sys.argv[1]), sys.argv[2], overwrite=True, verify=False)
print("DONE", flush=True)
