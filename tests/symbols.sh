#!/bin/sh
# The shared library exports exactly the functions include/mmipc.h declares
# with MMIPC_EXPORT, all named mmipc_*: nothing internal leaks (visibility +
# version script), nothing promised is missing.
# Needs top_builddir (and top_srcdir, else taken from this script's place).
# Exit 77 (skip) without nm or without a shared library (static-only build).

LC_ALL=C
export LC_ALL
top_builddir=${top_builddir:-.}
if test -z "$top_srcdir"; then
    top_srcdir=$(cd "$(dirname "$0")/.." && pwd)
fi
NM=${NM:-nm}
lib=$top_builddir/lib/.libs/libmmipc.so
header=$top_srcdir/include/mmipc.h

if ! command -v "$NM" >/dev/null 2>&1; then
    echo "SKIP: $NM not found"
    exit 77
fi
if ! test -f "$lib"; then
    echo "SKIP: $lib not built (static-only build?)"
    exit 77
fi
if ! test -f "$header"; then
    echo "FAIL: $header not found (set top_srcdir)"
    exit 1
fi

tmp=${TMPDIR:-/tmp}/mmipc-symbols.$$
mkdir "$tmp" || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    echo "PASS: $1"
}
ko() {
    failed=$((failed + 1))
    echo "FAIL: $1"
}

# Defined dynamic symbols as "TYPE NAME", version suffix (@@MMIPC_0) removed;
# type A is the version node itself, not a symbol of ours.
if ! "$NM" -D --defined-only "$lib" >"$tmp/nm.raw"; then
    echo "FAIL: $NM -D --defined-only $lib"
    exit 1
fi
awk 'NF >= 3 && $2 != "A" { sub(/@.*/, "", $3); print $2, $3 }' "$tmp/nm.raw" | sort -u >"$tmp/all"
awk '$1 ~ /^[TtWwi]$/ { print $2 }' "$tmp/all" | sort -u >"$tmp/funcs"

# 1. every exported symbol (function or data) is mmipc_*
grep -v ' mmipc_' "$tmp/all" >"$tmp/foreign"
if test -s "$tmp/foreign"; then
    ko "symbols exported without the mmipc_ prefix:"
    sed 's/^/    /' "$tmp/foreign"
else
    ok "every exported symbol starts with mmipc_"
fi

# 2. no data symbols exported (the API is functions only)
awk '$1 !~ /^[TtWwi]$/ { print }' "$tmp/all" >"$tmp/data"
if test -s "$tmp/data"; then
    ko "non-function symbols exported:"
    sed 's/^/    /' "$tmp/data"
else
    ok "only functions exported"
fi

# 3. the header declares something (guards the parsing below)
# A declaration's MMIPC_EXPORT line names the function before the first '('.
grep 'MMIPC_EXPORT' "$header" | grep -v '^[ 	]*#' |
    sed -n 's/^[^(]*[^A-Za-z0-9_]\([A-Za-z_][A-Za-z0-9_]*\)[ 	]*(.*/\1/p' | sort -u >"$tmp/declared"
ndecl=$(wc -l <"$tmp/declared" | tr -d ' ')
if test "$ndecl" -gt 0; then
    ok "include/mmipc.h declares $ndecl MMIPC_EXPORT functions"
else
    ko "no MMIPC_EXPORT function found in $header"
fi

# 4. exported functions == declared functions
comm -23 "$tmp/funcs" "$tmp/declared" >"$tmp/extra"
comm -13 "$tmp/funcs" "$tmp/declared" >"$tmp/missing"
if test -s "$tmp/extra" || test -s "$tmp/missing"; then
    ko "exported functions differ from the MMIPC_EXPORT declarations"
    if test -s "$tmp/extra"; then
        echo "  exported but not declared:"
        sed 's/^/    /' "$tmp/extra"
    fi
    if test -s "$tmp/missing"; then
        echo "  declared but not exported:"
        sed 's/^/    /' "$tmp/missing"
    fi
else
    ok "exported functions match include/mmipc.h"
fi

echo "$passed passed, $failed failed"
test "$failed" -eq 0
