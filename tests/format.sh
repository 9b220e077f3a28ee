#!/bin/sh
# Every C file in the tree is formatted by the root .clang-format
# (clang-format 14, as on Debian 12).  Skips (77) without clang-format.
srcdir=${top_srcdir:-.}
command -v clang-format >/dev/null 2>&1 || { echo "SKIP: clang-format not installed"; exit 77; }
pass=0 fail=0
for f in "$srcdir"/lib/*.[ch] "$srcdir"/include/*.h "$srcdir"/tools/*.c "$srcdir"/demos/*.c \
         "$srcdir"/tests/*.[ch] "$srcdir"/bench/*.c "$srcdir"/fuzz/*.[ch]; do
    [ -f "$f" ] || continue
    if clang-format --style="file:$srcdir/.clang-format" "$f" | cmp -s "$f" -; then
        pass=$((pass + 1))
    else
        echo "FAIL: $f is not clang-formatted (run: clang-format -i $f)"
        fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
