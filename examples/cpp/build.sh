#!/usr/bin/env bash
# Build examples/cpp/build/recsys_example against the libtorch inside a Python torch install.
#
#   examples/cpp/build.sh            # PYTHON defaults to the repo's .venv/bin/python
#   PYTHON=/path/to/python examples/cpp/build.sh
#   FORCE=1 examples/cpp/build.sh    # rebuild even if up to date
#
# Header and library paths come from torch.utils.cpp_extension, the C++ ABI flag from
# torch._C._GLIBCXX_USE_CXX11_ABI. The binary gets an rpath to torch's lib directory, so
# it runs without LD_LIBRARY_PATH. The build is skipped when the binary is newer than
# main.cpp and this script and was built with the same flags (torch version included).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then PYTHON="$(command -v python3)"; fi
CXX="${CXX:-g++}"
OUT_DIR="$HERE/build"
OUT="$OUT_DIR/recsys_example"
STAMP="$OUT_DIR/flags.txt"

# Prints: torch version, ABI flag (0/1), library dir, then one include dir per line.
TORCH_INFO="$("$PYTHON" - <<'PY'
import torch
from torch.utils import cpp_extension
print(torch.__version__)
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(cpp_extension.library_paths()[0])
for p in cpp_extension.include_paths():
    print(p)
PY
)"
TORCH_VERSION="$(sed -n 1p <<<"$TORCH_INFO")"
ABI="$(sed -n 2p <<<"$TORCH_INFO")"
LIB_DIR="$(sed -n 3p <<<"$TORCH_INFO")"
INCLUDES=()
while IFS= read -r inc; do INCLUDES+=("-isystem" "$inc"); done < <(sed -n '4,$p' <<<"$TORCH_INFO")
if [ ! -f "$(sed -n 4p <<<"$TORCH_INFO")/torch/script.h" ]; then
  echo "build.sh: torch C++ headers not found under $(sed -n 4p <<<"$TORCH_INFO")" >&2
  exit 3
fi

CMD=("$CXX" -std=c++17 -O2 "-D_GLIBCXX_USE_CXX11_ABI=$ABI" "${INCLUDES[@]}"
     "$HERE/main.cpp" -o "$OUT.tmp"
     "-L$LIB_DIR" "-Wl,-rpath,$LIB_DIR" -ltorch -ltorch_cpu -lc10)
FLAGS="torch=$TORCH_VERSION ${CMD[*]}"

if [ "${FORCE:-0}" != 1 ] && [ -x "$OUT" ] && [ "$OUT" -nt "$HERE/main.cpp" ] \
   && [ "$OUT" -nt "$HERE/build.sh" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$FLAGS" ]; then
  echo "build.sh: $OUT is up to date"
  exit 0
fi

mkdir -p "$OUT_DIR"
echo "build.sh: compiling against torch $TORCH_VERSION (ABI=$ABI)" >&2
"${CMD[@]}"
mv -f "$OUT.tmp" "$OUT"
printf '%s' "$FLAGS" >"$STAMP"
echo "build.sh: built $OUT"
