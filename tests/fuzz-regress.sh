#!/bin/sh
# Replay the fuzz seed corpus and every past fuzzer finding through both
# harnesses, built as plain programs (tests/fuzz-regress.c): a finding that
# comes back shows up as a crash or an abort here.
srcdir=${top_srcdir:-.}
builddir=${top_builddir:-.}
status=0
for h in open mutate; do
    prog=$builddir/tests/fuzz-regress-$h
    test -x "$prog" || { echo "fuzz-regress.sh: $prog not built" >&2; exit 99; }
    "$prog" "$srcdir/fuzz/corpus/$h" "$srcdir/fuzz/regress/$h" || status=1
done
exit $status
