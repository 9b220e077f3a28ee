#!/bin/sh
# The machine instructions the hot paths were tuned around are in the built
# library.  A compiler may drop a hint without a word: GCC 12 deleted every
# call of kv's body prefetch once it was a helper of nothing but
# __builtin_prefetch (2cf5469 to 7c9d53f), and the benchmark figures of
# that time were measured without it.  So look at the code: each public
# function below must contain the instruction itself or call (directly or
# through other functions of the library) one that does:
#   - kv get, and put and cas through lookup: PREFETCHT0 of the slot body
#     (lib/atomics.h mmipc__prefetch_read);
#   - ring send and reserve: PREFETCHW of the lines ahead
#     (mmipc__prefetch_write);
#   - ring send: the non-temporal copy of big messages (mmipc__copy_stream:
#     MOVNTDQ from GCC, MOVNTPS from clang, the same 16-byte store).
# Any optimisation level: at -O0 the helpers stay out of line and are called.
# x86-64 only (elsewhere the hints are the compiler's builtins).
# Exit 77 (skip) without objdump, without a shared library, or off x86-64.

LC_ALL=C
export LC_ALL
top_builddir=${top_builddir:-.}
OBJDUMP=${OBJDUMP:-objdump}
lib=$top_builddir/lib/.libs/libmmipc.so

if ! command -v "$OBJDUMP" >/dev/null 2>&1; then
    echo "SKIP: $OBJDUMP not found"
    exit 77
fi
if ! test -f "$lib"; then
    echo "SKIP: $lib not built (static-only build?)"
    exit 77
fi
if ! "$OBJDUMP" -f "$lib" | grep -q 'x86-64'; then
    echo "SKIP: not an x86-64 library"
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mmipc-codegen.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM

if ! "$OBJDUMP" -d --no-show-raw-insn "$lib" >"$tmp/asm"; then
    echo "FAIL: $OBJDUMP -d $lib"
    exit 1
fi

passed=0
failed=0

# has MNEMONIC-REGEX FUNCTION: FUNCTION contains the instruction, or reaches
# a function that does by calls and jumps to named functions of the library
# (a helper kept out of line, any .constprop/.isra/.cold part included).
has() {
    found=$(awk -v ire="^($1)\$" -v start="$2" '
        function base(s) { sub(/[.].*/, "", s); return s }
        /^[0-9a-f]+ <.*>:$/ { f = $2; gsub(/[<>:]/, "", f); f = base(f); next }
        f != "" && $2 ~ ire { own[f] = 1 }
        f != "" && $2 ~ /^(call|jmp|j[a-z]+)$/ && $NF ~ /^<[^@+]*>$/ {
            g = $NF; gsub(/[<>]/, "", g); g = base(g)
            if (g != f) edge[f, g] = 1
        }
        END {
            seen[start] = 1; queue[0] = start; n = 1
            for (q = 0; q < n; q++) {
                f = queue[q]
                if (f in own) { print f; exit }
                for (k in edge) {
                    split(k, p, SUBSEP)
                    if (p[1] == f && !(p[2] in seen)) { seen[p[2]] = 1; queue[n++] = p[2] }
                }
            }
        }' "$tmp/asm")
    if test -n "$found"; then
        passed=$((passed + 1))
        echo "PASS: $2 reaches $1 (in $found)"
    else
        failed=$((failed + 1))
        echo "FAIL: $2 reaches no $1"
    fi
}

has prefetcht0 mmipc_kv_get
has prefetcht0 mmipc_kv_put
has prefetcht0 mmipc_kv_cas
has prefetchw mmipc_ring_send
has prefetchw mmipc_ring_reserve
has 'v?movnt(dq|ps|pd)' mmipc_ring_send

echo "$passed passed, $failed failed"
test "$failed" -eq 0
