#!/bin/sh
# Run each demo with small sizes and check that it says "verify: OK" and
# exits 0.  Part of `make check` (top_builddir is set by TESTS_ENVIRONMENT).

top_builddir=${top_builddir:-.}
demos=$top_builddir/demos
passed=0
failed=0

out=$(mktemp "${TMPDIR:-/tmp}/mmipc-demos.XXXXXX") || exit 99
trap 'rm -f "$out"' EXIT

if command -v timeout >/dev/null 2>&1; then
    limit="timeout 60"
else
    limit=""
fi

# run NAME COMMAND...: run COMMAND, expect exit 0 and a "verify: OK" line.
run() {
    name=$1
    shift
    $limit "$@" >"$out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ] && grep -q '^verify: OK' "$out"; then
        passed=$((passed + 1))
        echo "PASS: $name"
    else
        failed=$((failed + 1))
        echo "FAIL: $name (exit status $rc)"
        sed 's/^/    /' "$out"
    fi
}

for prog in prodcons kv_watch crash; do
    if [ ! -x "$demos/$prog" ]; then
        echo "FAIL: $demos/$prog is not built"
        failed=$((failed + 1))
    fi
done

if [ "$failed" -eq 0 ]; then
    run "prodcons fixed size" "$demos/prodcons" -p 2 -c 2 -n 2000
    run "prodcons random sizes" "$demos/prodcons" -p 3 -c 2 -n 2000 -s 24-3000 --capacity 64k
    run "prodcons one to one" "$demos/prodcons" -p 1 -c 1 -n 5000 -s 24
    run "kv_watch" "$demos/kv_watch" -w 3
    run "crash" "$demos/crash" -r 3
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
