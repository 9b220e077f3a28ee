#!/bin/sh
# Regenerate the fuzz seed corpus (fuzz/corpus/open, fuzz/corpus/mutate).
#
#   fuzz/make-seeds.sh BUILDDIR [OUTDIR]
#
# BUILDDIR is a configured build tree (for config.h); OUTDIR defaults to
# fuzz/corpus next to this script.  Builds fuzz/make-seeds.c straight from
# the library sources with ${CC:-cc} and runs it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
build=${1:?usage: $0 BUILDDIR [OUTDIR]}
out=${2:-$here/corpus}
test -f "$build/config.h" || { echo "$0: $build/config.h not found (configure first)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -std=gnu11 -pthread -O1 -I"$top/include" -I"$top/lib" -I"$build" -I"$here" \
    -o "$tmp/make-seeds" "$here/make-seeds.c" "$top"/lib/*.c
mkdir -p "$out"
rm -f "$out"/open/*.region "$out"/mutate/*.prog
echo "writing seeds to $out:"
TMPDIR="$tmp" "$tmp/make-seeds" "$out"
