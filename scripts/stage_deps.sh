#!/usr/bin/env bash
# Copies this machine's Debian builds of GoogleTest, Google Benchmark and the
# dlpack headers into <repo>/.deps (a CMake prefix: include/, lib/<arch>/,
# lib/<arch>/cmake/), for a machine that lacks them and cannot install them:
# scripts/device_check.sh adds .deps to CMAKE_PREFIX_PATH when it exists.
# The libraries are built by an older GCC than the GPU machine's, so they link
# there. .deps is kept out of git through .git/info/exclude.
#
# Usage: scripts/stage_deps.sh   (needs libgtest-dev libgmock-dev
#        libbenchmark-dev libdlpack-dev installed here)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=$repo/.deps
packages=(libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian libdlpack-dev)

rm -rf "$dest"
for pkg in "${packages[@]}"; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    echo "stage_deps: $pkg is not installed here; skipped" >&2
    continue
  fi
  while IFS= read -r path; do
    case $path in
      /usr/include/* | /usr/lib/*) ;;
      *) continue ;;
    esac
    [[ -f $path || -L $path ]] || continue
    target=$dest/${path#/usr/}
    mkdir -p "$(dirname "$target")"
    cp -P "$path" "$target"
  done < <(dpkg -L "$pkg")
done

# Pure-Python wheels the Python package's build and tests need, for a machine
# without PyPI (the GPU machine has torch, but maybe not these).
python3 -m pip download -q -d "$dest/wheels" "scikit-build-core>=0.10" pytest ||
  echo "stage_deps: could not download the Python wheels; skipped" >&2

exclude=$repo/.git/info/exclude
if [[ -d $repo/.git ]] && ! grep -qx '/.deps/' "$exclude" 2>/dev/null; then
  mkdir -p "$(dirname "$exclude")"
  echo '/.deps/' >>"$exclude"
fi
echo "stage_deps: $(du -sh "$dest" | cut -f1) in $dest; carry it with the run (carry: [\".deps\"])"
