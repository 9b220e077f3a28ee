#!/bin/sh
# End-to-end test of the mmipc command-line tool (tools/mmipc.c): every
# subcommand, exit statuses, pipelines, JSON output, watching across
# processes, a SIGKILLed sender, and `check` on corrupted files.
#
# Run by `make check` with top_builddir and top_srcdir set; by hand:
#   top_builddir=. top_srcdir=/path/to/src sh tests/tool.sh
# Every command runs under timeout(1), so a bug shows as a failure, never a
# hang.  Prints one line per check and "N passed, M failed" at the end.
#
# shellcheck disable=SC2016,SC2059,SC2013
# (sh -c '...' scripts get their arguments as "$1"...; same() takes a
# printf format on purpose.)

top_builddir=${top_builddir:-.}
top_srcdir=${top_srcdir:-$(dirname "$0")/..}
MMIPC=$(cd "$top_builddir" && pwd)/tools/mmipc

if ! command -v timeout >/dev/null 2>&1; then
    echo "SKIP: timeout(1) is not installed"
    exit 77
fi
if [ ! -x "$MMIPC" ]; then
    echo "FAIL: $MMIPC not built"
    exit 1
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/mmipc-tool.XXXXXX") || exit 1
BG=
cleanup()
{
    for p in $BG; do
        kill "$p" 2>/dev/null
    done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

if sleep 0.1 2>/dev/null; then
    TICK=0.1 TICKS_PER_S=10
else
    TICK=1 TICKS_PER_S=1
fi
if command -v python3 >/dev/null 2>&1 && python3 -c 'import json' 2>/dev/null; then
    HAVE_PY=1
else
    HAVE_PY=0
fi

pass=0
fail=0
ok()
{
    pass=$((pass + 1))
    echo "PASS: $1"
}
nok()
{
    fail=$((fail + 1))
    echo "FAIL: $1"
    if [ -s "$T/err" ]; then
        sed 's/^/    stderr| /' "$T/err" | head -n 10
    fi
}

# mm ARGS...: the tool, bounded in time.
mm()
{
    timeout 30 "$MMIPC" "$@"
}

# expect STATUS DESCRIPTION mm ARGS...: run with stdout in $T/out, stderr in
# $T/err, and check the exit status.
expect()
{
    want=$1 desc=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" -eq "$want" ]; then
        ok "$desc"
    else
        nok "$desc (exit $rc, wanted $want)"
    fi
}

# check DESCRIPTION COMMAND...: passes if COMMAND succeeds.
check()
{
    desc=$1
    shift
    if "$@"; then
        ok "$desc"
    else
        nok "$desc"
    fi
}

# wait_for SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for()
{
    n=$(($1 * TICKS_PER_S))
    shift
    while [ "$n" -gt 0 ]; do
        "$@" && return 0
        sleep $TICK
        n=$((n - 1))
    done
    "$@"
}

# same FILE TEXT: FILE holds exactly TEXT (printf format) .
same()
{
    printf "$2" >"$T/want"
    cmp -s "$1" "$T/want"
}

has()
{
    grep -qF -- "$2" "$1"
}

# py DESCRIPTION FILE CODE: run CODE with d = the JSON in FILE.
py()
{
    if [ "$HAVE_PY" -eq 0 ]; then
        echo "SKIP: $1 (no python3)"
        return
    fi
    check "$1" python3 -c '
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
exec(sys.argv[2])
' "$2" "$3"
}

# lines FILE: number of lines in FILE.
lines()
{
    wc -l <"$1" | tr -d ' '
}

# object_offset FILE NAME: an object's offset, from `stat --json`.
object_offset()
{
    mm stat --json "$1" | sed -n "s/.*\"name\": \"$2\", \"kind\": \"[a-z]*\", \"kind_code\": [0-9]*, \"offset\": \([0-9]*\).*/\1/p"
}

# first_lease_pid FILE: pid of the first attached process, from `stat --json`.
first_lease_pid()
{
    mm stat --json "$1" 2>/dev/null | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -n 1
}

# alive_at_least FILE N: at least N live processes have FILE open.
alive_at_least()
{
    test "$(mm stat --json "$1" 2>/dev/null | grep -c '"alive": true')" -ge "$2"
}

F=$T/region
Q="jobs"

# ------------------------------------------------------------ basics
expect 0 "mmipc --help" mm --help
check "--help lists every command" sh -c 'for c in create stat check send recv put get del ls watch; do grep -q "^  $c " "$1" || exit 1; done' sh "$T/out"
expect 0 "mmipc --version" mm --version
check "--version prints a version" grep -q '^mmipc [0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*$' "$T/out"
expect 2 "no command is a usage error" mm
expect 2 "unknown command is a usage error" mm frobnicate
check "unknown command says so" has "$T/err" "mmipc: unknown command 'frobnicate'"
for c in create stat check send recv put get del ls watch help; do
    expect 0 "mmipc $c --help" mm "$c" --help
    check "mmipc $c --help shows usage" grep -q "^Usage: mmipc $c" "$T/out"
done

# ------------------------------------------------------------ create
expect 2 "create without PATH" mm create
expect 2 "create with a bad size" mm create "$F" --size 12Q
expect 2 "create with an unknown option" mm create "$F" --frob
expect 2 "create with a bad --ring" mm create "$F" --ring q:lots
expect 2 "create with a missing option value" mm create "$F" --ring
expect 2 "create with a bad mode" mm create "$F" --mode 999
check "usage errors create nothing" test ! -e "$F"
expect 1 "create in a missing directory" mm create "$T/no/such/dir/f"
check "failure message is 'mmipc: PATH: message'" has "$T/err" "mmipc: $T/no/such/dir/f: "
expect 1 "create with objects too big for the region" mm create "$T/small" --size 64K --ring big:1M
check "a failed create leaves no file" test ! -e "$T/small"
expect 0 "create with rings and a kv table" \
    mm create "$F" --size 2M --ring "$Q:64K" --kv cfg:64:1K --ring raw:16K --max-objects 16
check "create is silent" test ! -s "$T/out"
expect 1 "create over an existing file" mm create "$F"
check "existing file: message names the path" has "$T/err" "mmipc: $F: "
expect 0 "create with options after PATH and K/M suffixes" mm create "$T/m" --mode 0640 --size 1MiB --kv k:16:4k
check "--mode sets the permission bits" sh -c 'ls -l "$1" | grep -q "^-rw-r-----"' sh "$T/m"

# ------------------------------------------------------------ stat
expect 0 "stat" mm stat "$F"
check "stat shows the format" grep -q '^  format  *4\.' "$T/out"
check "stat shows a human-readable size" has "$T/out" "2.0 MiB (2097152 bytes)"
check "stat lists the ring" grep -q "^  $Q  *64.0 KiB" "$T/out"
check "stat lists the kv table" grep -q '^  cfg  *64 ' "$T/out"
expect 0 "stat --json" mm stat --json "$F"
cp "$T/out" "$T/stat.json"
py "stat --json is valid JSON describing the region" "$T/stat.json" '
assert d["size"] == 2097152 and d["used"] + d["free"] == d["size"], d
assert d["max_objects"] == 16
o = {x["name"]: x for x in d["objects"]}
assert o["jobs"]["kind"] == "ring" and o["jobs"]["capacity"] == 65536, o
assert o["jobs"]["max_message"] >= 65536 // 2 - 64
assert o["cfg"]["kind"] == "kv" and o["cfg"]["slots"] == 64 and o["cfg"]["value_max"] == 1024, o
assert o["raw"]["offset"] > 0 and o["raw"]["size"] >= 16384
assert isinstance(d["leases"], list)
'
# A name with quotes, backslash, tab, an invalid UTF-8 byte and valid UTF-8.
odd=$(printf 'q"\\\t\377\303\251')
expect 0 "create a ring with an odd name" mm create "$T/odd" --ring "$odd:4K"
expect 0 "stat with an odd object name" mm stat "$T/odd"
check "text stat escapes non-printable bytes" has "$T/out" 'q"\\\t\xff\xc3\xa9'
expect 0 "stat --json with an odd object name" mm stat --json "$T/odd"
py "JSON escapes names and replaces invalid UTF-8" "$T/out" '
assert d["objects"][0]["name"] == "q\"\\\t\ufffd\u00e9", repr(d["objects"][0]["name"])
'
expect 1 "stat of a missing file" mm stat "$T/missing"
check "stat of a missing file: message" has "$T/err" "mmipc: $T/missing: "
expect 1 "stat of a directory" mm stat "$T"
ln -s "$F" "$T/link"
expect 1 "stat of a symlink is refused" mm stat "$T/link"
expect 2 "stat with two paths" mm stat "$F" "$F"

# ------------------------------------------------------------ send / recv
printf 'one\ntwo\n\nfour' | mm send "$F" "$Q" 2>"$T/err"
check "send lines from a pipe" test $? -eq 0
expect 0 "send messages from arguments, options after them" mm send "$F" "$Q" five -- -six --timeout
expect 0 "recv -n 7" mm recv "$F" "$Q" -n 7
check "messages arrive in order, one per line" same "$T/out" 'one\ntwo\n\nfour\nfive\n-six\n--timeout\n'
expect 0 "recv --timeout 0 on an empty ring" mm recv "$F" "$Q" --timeout 0
check "empty ring prints nothing" test ! -s "$T/out"
expect 1 "recv -n 2 --timeout times out" mm recv -n 2 --timeout 100 "$F" "$Q"
check "timeout message counts what arrived" has "$T/err" "0 of 2"
seq 1 500 | mm send "$F" "$Q"
mm recv "$F" "$Q" --timeout 200 >"$T/out"
check "500 messages through a pipeline, no -n, ended by --timeout" sh -c 'seq 1 500 | cmp -s - "$1"' sh "$T/out"
expect 1 "send to a missing ring" mm send "$F" nosuch x
check "missing ring: message" has "$T/err" "mmipc: $F: no ring named 'nosuch'"
expect 1 "recv from a kv table" mm recv "$F" cfg --timeout 0
expect 2 "recv with a bad count" mm recv "$F" "$Q" -n lots
expect 2 "recv without RING" mm recv "$F"
expect 2 "send --raw with message arguments" mm send --raw "$F" "$Q" x
big=$(head -c 40000 /dev/zero | tr '\0' x)
expect 1 "send a message larger than the ring allows" mm send "$F" "$Q" "$big"
check "too large: message says so" has "$T/err" "at most"

# --raw both ways: messages with newlines and empty ones.
printf '\005\000\000\000a\nb\0c\000\000\000\000\003\000\000\000xyz' >"$T/frames"
mm send --raw "$F" raw <"$T/frames" 2>"$T/err"
check "send --raw framed messages" test $? -eq 0
expect 0 "recv --raw" mm recv --raw "$F" raw -n 3
check "recv --raw gives back the same frames" cmp -s "$T/out" "$T/frames"
printf '\005\000\000\000ab' | mm send --raw "$F" raw 2>"$T/err"
check "send --raw rejects a truncated frame" test $? -eq 1
mm send "$F" raw hello
expect 0 "recv --raw of a text message" mm recv --raw "$F" raw -n 1
check "raw frame: 4-byte little-endian length then bytes" same "$T/out" '\005\000\000\000hello'

# A consumer running before the producer, in another process.
timeout 10 "$MMIPC" recv "$F" "$Q" -n 3 >"$T/bg.out" 2>"$T/bg.err" &
bgpid=$!
BG="$BG $bgpid"
printf 'red\ngreen\nblue\n' | mm send "$F" "$Q"
wait "$bgpid" 2>/dev/null
check "background recv exits 0 after -n 3" test $? -eq 0
check "background recv got the messages" same "$T/bg.out" 'red\ngreen\nblue\n'

# The reader of recv's output going away ends recv quietly.
seq 1 5 | mm send "$F" "$Q"
(
    mm recv "$F" "$Q" 2>"$T/pipe.err"
    echo $? >"$T/pipe.rc"
) | head -n 1 >"$T/out"
check "recv | head -n 1 ends, exit 0" same "$T/pipe.rc" '0\n'
check "recv | head -n 1: nothing on stderr" test ! -s "$T/pipe.err"
check "recv | head -n 1: first message" same "$T/out" '1\n'
mm recv "$F" "$Q" --timeout 0 >/dev/null

# ------------------------------------------------------------ kv
expect 0 "put VALUE" mm put "$F" cfg level debug
expect 0 "get" mm get "$F" cfg level
check "get prints the value and a newline" same "$T/out" 'debug\n'
expect 0 "get --version" mm get --version "$F" cfg level
v1=$(cut -d' ' -f1 "$T/out")
check "get --version prints 'VERSION VALUE'" grep -q '^[1-9][0-9]* debug$' "$T/out"
expect 0 "put again" mm put "$F" cfg level info
mm get -v "$F" cfg level >"$T/out"
v2=$(cut -d' ' -f1 "$T/out")
check "a new put gives a larger version" test "$v2" -gt "$v1"
printf 'two\nlines\001' | mm put "$F" cfg blob 2>"$T/err"
check "put from stdin" test $? -eq 0
expect 0 "get --raw" mm get --raw "$F" cfg blob
check "get --raw gives the exact bytes" same "$T/out" 'two\nlines\001'
expect 0 "put an empty value" mm put "$F" cfg empty ""
expect 0 "ls" mm ls "$F" cfg
check "ls has a header" grep -q '^KEY  *VERSION  *LENGTH  *VALUE$' "$T/out"
check "ls escapes values" grep -q '^blob  *[0-9][0-9]*  *10  two\\nlines\\x01$' "$T/out"
check "ls sorts keys" sh -c 'sed 1d "$1" | cut -d" " -f1 | sort -c' sh "$T/out"
check "ls lists 3 keys" test "$(lines "$T/out")" -eq 4
expect 0 "del" mm del "$F" cfg blob
expect 1 "get a deleted key" mm get "$F" cfg blob
check "missing key: message" has "$T/err" "mmipc: $F: kv 'cfg': no key 'blob'"
expect 1 "del a missing key" mm del "$F" cfg blob
expect 1 "put a value larger than value_max" mm put "$F" cfg big "$(head -c 2000 /dev/zero | tr '\0' y)"
expect 1 "get from a missing table" mm get "$F" nosuch k
expect 1 "get from a ring" mm get "$F" "$Q" k
expect 2 "get without KEY" mm get "$F" cfg
expect 2 "put with too many arguments" mm put "$F" cfg k v extra

# watch across processes: the current value, then changes, then a delete.
mm put "$F" cfg w one
timeout 10 "$MMIPC" watch "$F" cfg w -n 3 >"$T/watch.out" 2>"$T/watch.err" &
bgpid=$!
BG="$BG $bgpid"
check "watch prints the current value" wait_for 10 same "$T/watch.out" 'one\n'
mm put "$F" cfg w two
check "watch sees a put by another process" wait_for 10 same "$T/watch.out" 'one\ntwo\n'
mm del "$F" cfg w
wait "$bgpid" 2>/dev/null
check "watch -n 3 exits 0" test $? -eq 0
check "watch prints (deleted)" same "$T/watch.out" 'one\ntwo\n(deleted)\n'
timeout 10 "$MMIPC" watch --changes --version "$F" cfg w2 -n 1 >"$T/watch.out" 2>"$T/watch.err" &
bgpid=$!
BG="$BG $bgpid"
# It only prints changes after its first look: put until it has seen one.
n=0
while kill -0 "$bgpid" 2>/dev/null && [ "$n" -lt 50 ]; do
    mm put "$F" cfg w2 hello
    sleep $TICK
    n=$((n + 1))
done
wait "$bgpid" 2>/dev/null
check "watch --changes --version sees a new key" grep -q '^[1-9][0-9]* hello$' "$T/watch.out"
expect 0 "watch --timeout without -n ends with 0" mm watch "$F" cfg quiet --timeout 100
expect 1 "watch -n --timeout ends with 1" mm watch "$F" cfg quiet --timeout 100 -n 1

# ------------------------------------------------------------ processes
timeout 10 "$MMIPC" recv "$F" "$Q" -n 1 >/dev/null 2>&1 &
bgpid=$!
BG="$BG $bgpid"
check "stat shows an attached receiver" wait_for 10 alive_at_least "$F" 1
lpid=$(first_lease_pid "$F")
expect 0 "stat while a receiver waits" mm stat "$F"
check "stat lists it as alive" grep -q "^  *$lpid  *[0-9][0-9]*  *alive$" "$T/out"
test -n "$lpid" && kill -9 "$lpid"
wait "$bgpid" 2>/dev/null
check "receiver SIGKILLed while waiting" test $? -eq 137
expect 0 "send after a receiver was killed" mm send --timeout 2000 "$F" "$Q" after-kill
expect 0 "recv after a receiver was killed" mm recv --timeout 2000 -n 1 "$F" "$Q"
check "the message is intact" same "$T/out" 'after-kill\n'
check "no attached process is left alive" sh -c '! "$1" stat "$2" | grep -q " alive$"' sh "$MMIPC" "$F"

# A sender SIGKILLed at a random point while a receiver drains, and the
# receiver stopped with SIGTERM: every message arrives whole, exactly once,
# in order (a receiver stopped by a signal writes out what it has taken).
seq 1 100000000 | timeout 20 "$MMIPC" send "$F" "$Q" 2>/dev/null &
spid=$!
BG="$BG $spid"
timeout 20 "$MMIPC" recv "$F" "$Q" >"$T/drain.out" 2>"$T/drain.err" &
rpid=$!
BG="$BG $rpid"
check "sender and receiver attach" wait_for 10 alive_at_least "$F" 2
sleep $TICK
sleep $TICK
# attached_pid WORD: pid of the attached mmipc process running WORD.
attached_pid()
{
    for p in $(mm stat --json "$F" | sed -n 's/.*"pid": \([0-9]*\), "alive": true.*/\1/p'); do
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q " $1 "; then
            echo "$p"
        fi
    done
}
p=$(attached_pid recv)
check "the receiver is attached" test -n "$p"
test -n "$p" && kill -TERM "$p"
wait "$rpid" 2>/dev/null
check "SIGTERM stops recv, which dies of it" test $? -eq 143
check "SIGTERM: recv said nothing" test ! -s "$T/drain.err"
p=$(attached_pid send)
check "the sender is attached" test -n "$p"
test -n "$p" && kill -9 "$p"
wait "$spid" 2>/dev/null
mm recv "$F" "$Q" --timeout 500 >>"$T/drain.out"
check "receiver drains after the sender is killed" test $? -eq 0
n=$(lines "$T/drain.out")
check "messages after a killed sender: whole, once, in order ($n)" sh -c 'seq 1 "$2" | cmp -s - "$1"' sh "$T/drain.out" "$n"
expect 0 "check after a killed sender" mm check "$F"

# ------------------------------------------------------------ check
expect 0 "check a good file" mm check "$F"
check "check prints ok with the object count" same "$T/out" "$F: ok (3 objects)\n"
cp "$F" "$T/badmagic"
printf 'NOTMMIPC' | dd of="$T/badmagic" bs=1 seek=0 conv=notrunc 2>/dev/null
expect 1 "check a file with a bad magic" mm check "$T/badmagic"
check "bad magic is a header problem" grep -q "^$T/badmagic: header: ." "$T/out"
expect 1 "stat of a file with a bad magic" mm stat "$T/badmagic"
expect 1 "send to a file with a bad magic" mm send "$T/badmagic" "$Q" x
check "corrupt file: message names the path" has "$T/err" "mmipc: $T/badmagic: "
printf 'just some text\n' >"$T/text"
expect 1 "check a text file" mm check "$T/text"
: >"$T/empty"
expect 1 "check an empty file" mm check "$T/empty"
expect 1 "check a missing file" mm check "$T/missing"
check "check of a missing file: message" has "$T/err" "mmipc: $T/missing: "

off=$(object_offset "$F" "$Q")
check "object offset from stat --json" test -n "$off"
cp "$F" "$T/badring"
# struct mmipc__ring: head is the 8 bytes at offset 256 in the object.
printf '\377\377\377\377\377\377\377\177' | dd of="$T/badring" bs=1 seek=$((off + 256)) conv=notrunc 2>/dev/null
expect 1 "check a ring with a corrupt head" mm check "$T/badring"
check "the problem names the ring" grep -q "^$T/badring: $Q: ." "$T/out"
expect 1 "stat with a corrupt ring still exits 1" mm stat "$T/badring"
check "stat still shows the healthy objects" grep -q '^  cfg ' "$T/out"
check "stat names the broken ring on stderr" has "$T/err" "mmipc: $T/badring: ring '$Q': "
expect 1 "stat --json with a corrupt ring" mm stat --json "$T/badring"
py "stat --json reports the broken object" "$T/out" '
o = {x["name"]: x for x in d["objects"]}
assert "error" in o["jobs"] and "capacity" not in o["jobs"], o["jobs"]
assert o["cfg"]["slots"] == 64
'
expect 1 "recv from a corrupt ring fails" mm recv "$T/badring" "$Q" --timeout 100
expect 0 "the other objects of that file still work" mm get "$T/badring" cfg level
expect 1 "check several files, one bad" mm check "$F" "$T/badring"
check "check lists the good one as ok" has "$T/out" "$F: ok"

# ------------------------------------------------------------ manual pages
man1=$top_srcdir/man/mmipc.1
man3=$top_srcdir/man/mmipc.3
hdr=$top_srcdir/include/mmipc.h
if [ -f "$man1" ] && [ -f "$man3" ] && [ -f "$hdr" ]; then
    missing=
    for fn in $(sed -n 's/^MMIPC_EXPORT.*[ *]\(mmipc_[a-z_]*\)(.*/\1/p' "$hdr"); do
        grep -q "^\.BR $fn ()" "$man3" || missing="$missing $fn"
    done
    check "mmipc.3 describes every function of mmipc.h${missing:+ (missing:$missing)}" test -z "$missing"
    missing=
    for c in create stat check send recv put get del ls watch help; do
        grep -q "^\.SS $c" "$man1" || missing="$missing $c"
    done
    check "mmipc.1 describes every command${missing:+ (missing:$missing)}" test -z "$missing"
    if command -v groff >/dev/null 2>&1; then
        check "mmipc.1 formats without warnings" sh -c 'test -z "$(groff -man -ww -z "$1" 2>&1)"' sh "$man1"
        check "mmipc.3 formats without warnings" sh -c 'test -z "$(groff -man -ww -z "$1" 2>&1)"' sh "$man3"
    fi
fi

echo "$pass passed, $fail failed"
test "$fail" -eq 0
