#!/usr/bin/env bash
# Build examples/cpp/build/recsys_example against the libtorch inside a Python torch install.
#
#   examples/cpp/build.sh            # PYTHON defaults to the repo's .venv/bin/python
#   PYTHON=/path/to/python examples/cpp/build.sh
#   CXX=clang++ examples/cpp/build.sh
#   FORCE=1 examples/cpp/build.sh    # rebuild even if up to date
#
# Header and library paths come from torch.utils.cpp_extension.include_paths() and
# library_paths(), the C++ ABI flag from torch._C._GLIBCXX_USE_CXX11_ABI. The binary gets an
# rpath to torch's lib directory, so it runs without LD_LIBRARY_PATH.
#
# Cache: the build is skipped when the binary is newer than main.cpp and this script and
# was built with the same compiler and the same torch (version and install location),
# which is checked without importing torch.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then PYTHON="$(command -v python3)"; fi
CXX="${CXX:-g++}"
OUT_DIR="$HERE/build"
OUT="$OUT_DIR/recsys_example"
STAMP="$OUT_DIR/stamp.txt"

KEY="cxx=$CXX $("$PYTHON" -c '
import importlib.metadata as md, importlib.util as iu
print("torch=" + md.version("torch"), iu.find_spec("torch").origin)')"

if [ "${FORCE:-0}" != 1 ] && [ -x "$OUT" ] && [ "$OUT" -nt "$HERE/main.cpp" ] \
   && [ "$OUT" -nt "$HERE/build.sh" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  echo "build.sh: $OUT is up to date"
  exit 0
fi

# Prints: ABI flag (0/1), library dir, then one include dir per line.
TORCH_INFO="$("$PYTHON" - <<'PY'
import torch
from torch.utils import cpp_extension
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(cpp_extension.library_paths()[0])
for p in cpp_extension.include_paths():
    print(p)
PY
)"
ABI="$(sed -n 1p <<<"$TORCH_INFO")"
LIB_DIR="$(sed -n 2p <<<"$TORCH_INFO")"
FIRST_INCLUDE="$(sed -n 3p <<<"$TORCH_INFO")"
if [ ! -f "$FIRST_INCLUDE/torch/script.h" ]; then
  echo "build.sh: torch C++ headers not found under $FIRST_INCLUDE" >&2
  exit 3
fi
INCLUDES=()
while IFS= read -r inc; do INCLUDES+=(-isystem "$inc"); done < <(sed -n '3,$p' <<<"$TORCH_INFO")

mkdir -p "$OUT_DIR"
echo "build.sh: compiling $OUT ($KEY, ABI=$ABI)" >&2
TMP="$OUT.tmp.$$"  # per process: concurrent builds never share a half-written file
trap 'rm -f "$TMP"' EXIT
"$CXX" -std=c++17 -O2 "-D_GLIBCXX_USE_CXX11_ABI=$ABI" "${INCLUDES[@]}" \
  "$HERE/main.cpp" -o "$TMP" \
  "-L$LIB_DIR" "-Wl,-rpath,$LIB_DIR" -ltorch -ltorch_cpu -lc10
mv -f "$TMP" "$OUT"
printf '%s' "$KEY" >"$STAMP"
echo "build.sh: built $OUT"
