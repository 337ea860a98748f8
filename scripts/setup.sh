#!/usr/bin/env bash
# Brings this checkout to a runnable state: Debian packages, .venv (Python 3.11) with the pinned
# Python packages, and the dexwm_ros package (interfaces + Python + executables) built into .venv.
# Every step is skipped when its inputs have not changed, so a re-run on a set-up machine is quick.
# --with-viz also installs the optional viewer (requirements-viz.txt: rerun-sdk, about 170 MB) and
# Debian's chromium, which its test uses to open the served page; `make test` passes it.
set -euo pipefail
WITH_VIZ=0
for arg in "$@"; do
  case "$arg" in
    --with-viz) WITH_VIZ=1 ;;
    *) echo "[setup] unknown option: $arg (known: --with-viz)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMP=$VENV/.dexwm-stamps
log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages (the machines run as root; elsewhere ask the user) -------------------------
DEB_PACKAGES=(libusb-1.0-0 libegl1 libgl1 libgles2 libosmesa6 libglvnd0)
if ((WITH_VIZ)); then DEB_PACKAGES+=(chromium); fi
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "[setup] missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python 3.11 virtual environment -------------------------------------------------------------
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$(command -v "$c"); break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "[setup] Python 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMP"

# pip keeps no wheel cache: the venv itself is about 3.3 GB and a fresh machine may have little
# more free; a failed install says how much room there was.
pip_install() {
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir "$@" || {
    echo "[setup] pip install failed; free space where the venv lives:" >&2
    df -h "$VENV" >&2 || true
    return 1
  }
}
free_kb=$(df -Pk "$ROOT" | awk 'NR == 2 {print $4}')
if [ ! -f "$STAMP/requirements" ] && [ "${free_kb:-0}" -lt $((4 * 1024 * 1024)) ]; then
  log "warning: $((free_kb / 1024)) MB free here; the pinned packages need about 3.5 GB"
fi

req_hash=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$STAMP/requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "installing pinned Python packages (requirements.txt)"
  pip_install -r requirements.txt
  echo "$req_hash" > "$STAMP/requirements"
  rm -f "$STAMP/cmake-paths"
fi

if ((WITH_VIZ)); then
  viz_hash=$(sha256sum requirements-viz.txt | cut -d' ' -f1)
  if [ "$(cat "$STAMP/requirements-viz" 2>/dev/null)" != "$viz_hash" ]; then
    log "installing the optional viewer packages (requirements-viz.txt)"
    pip_install -r requirements-viz.txt
    echo "$viz_hash" > "$STAMP/requirements-viz"
  fi
fi

# --- Make the ROS wheels' CMake exports point at this Python -----------------------------------
# The wheels bake the include paths of the machine that built them into their *Export.cmake files.
if [ ! -f "$STAMP/cmake-paths" ]; then
  py_include=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_include=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  { grep -rlE '/opt/python/cp311-cp311/' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } | while read -r f; do
    sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" \
           -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" "$f"
  done
  touch "$STAMP/cmake-paths"
fi

# --- Build and install the dexwm_ros package into the venv ---------------------------------------
# Incremental: cmake only regenerates what changed and `install` copies only changed files.
export PATH=$VENV/bin:$PATH
BUILD=$ROOT/build
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$VENV/bin/python" -DDEXWM_PYTHON="$VENV/bin/python" \
    -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$BUILD.log" 2>&1 \
    || { tail -30 "$BUILD.log" >&2; echo "[setup] cmake configure failed (log: $BUILD.log)" >&2; exit 1; }
fi
cmake --build "$BUILD" >"$BUILD.log" 2>&1 \
  || { tail -30 "$BUILD.log" >&2; echo "[setup] build failed (log: $BUILD.log)" >&2; exit 1; }
cmake --install "$BUILD" >>"$BUILD.log" 2>&1 \
  || { tail -30 "$BUILD.log" >&2; echo "[setup] install failed (log: $BUILD.log)" >&2; exit 1; }
# Install stale files from deleted sources are removed so the venv mirrors the checkout.
log "ready: $VENV"
