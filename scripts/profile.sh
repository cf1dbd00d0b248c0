#!/usr/bin/env bash
# profile.sh — where the time goes in one p2pfs workload over loopback: both
# sides under `perf record`, then each side's flat profile (self time by
# shared object, and by symbol). Not a benchmark (perf slows what it
# watches; scripts/bench.sh gives the figures) and not a test.
#
#   scripts/profile.sh small|import|send|get [OUT_DIR]
#
#   small   10,000 × 4 KiB files in a folder: `p2pfs send DIR` → `p2pfs serve`
#   import  the same folder: `p2pfs vault import DIR`
#   send    one 1 GiB random file: `p2pfs send FILE` → `p2pfs serve`
#   get     the same file: `p2pfs get` ← `p2pfs serve` (started without any
#           passphrase), into a plain file
#
# Environment: PROFILE_SMALL_N (10000), PROFILE_SIZE_MIB (1024),
# PROFILE_FREQ (perf sampling rate, 999 Hz), BENCH_NO_BUILD=1 (use the
# existing target/release/p2pfs), BENCH_TMPDIR (default <repo>/target).
# Installs perf (Debian package linux-perf) and GNU time when missing.
#
# Output: OUT_DIR (default target/profile-WORKLOAD) holds one perf.data per
# side and report-SIDE.txt, which this script also prints: the lines of at
# least 1% self time, with the CPU flags, the kernel and the commit.
set -euo pipefail
BL_NAME=profile.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

WHAT=${1:-}
case $WHAT in small | import | send | get) ;; *)
    echo "usage: scripts/profile.sh small|import|send|get [OUT_DIR]" >&2
    exit 2
    ;;
esac
OUT=$(realpath -m -- "${2:-$BL_REPO/target/profile-$WHAT}")
N=${PROFILE_SMALL_N:-10000}
MIB=${PROFILE_SIZE_MIB:-1024}
FREQ=${PROFILE_FREQ:-999}

command -v perf >/dev/null || bl_apt_install linux-perf || true
command -v perf >/dev/null || bl_die "could not install perf (Debian package linux-perf)"
bl_need_time
bl_build_p2pfs
bl_make_work profile
mkdir -p "$OUT"
rm -f "$OUT"/perf-*.data "$OUT"/report-*.txt
export P2PFS_PASSPHRASE=profile-passphrase
unset P2PFS_PASSPHRASE_FILE P2PFS_HOME

# record SIDE CMD...: CMD under perf record (its children too), into OUT.
record() {
    local side=$1
    shift
    perf record -q -F "$FREQ" -o "$OUT/perf-$side.data" -- "$@"
}

# serve_recorded HOME [nopass]: a serve under perf record; sets SERVE_PID
# (perf's pid: SIGINT to it ends the recording and serve), SERVE_ADDR.
serve_recorded() {
    local home=$1 pre=()
    if [ "${2:-}" = nopass ]; then pre=(env -u P2PFS_PASSPHRASE -u P2PFS_PASSPHRASE_FILE); fi
    perf record -q -F "$FREQ" -o "$OUT/perf-serve.data" -- \
        "${pre[@]}" "$P2PFS" --home "$home" -q serve --listen 127.0.0.1:0 --no-mdns \
        </dev/null >"$WORK/serve.out" 2>&1 &
    SERVE_PID=$!
    SERVE_ADDR=$(bl_serve_addr "$SERVE_PID" "$WORK/serve.out") ||
        bl_die "serve did not start: $(cat "$WORK/serve.out")"
}

serve_stop() {
    # perf forwards SIGINT to serve, which stops cleanly; perf then writes
    kill -INT "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
}

make_small() {
    local d=$WORK/small i
    mkdir -p "$d"
    for i in $(seq 0 99); do mkdir "$d/d$i"; done
    python3 - "$d" "$N" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/d{i % 100}/f{i}", "wb") as f:
        f.write(os.urandom(4096))
EOF
    cat "$d"/*/* >/dev/null
    SRC=$d
}

make_big() {
    SRC=$WORK/big.bin
    head -c "$((MIB << 20))" /dev/urandom >"$SRC"
    cat "$SRC" >/dev/null
}

push_homes() {
    RHOME=$WORK/recv SHOME=$WORK/send
    "$P2PFS" --home "$RHOME" init --name profile-recv >/dev/null
    "$P2PFS" --home "$SHOME" init --name profile-send >/dev/null
    "$P2PFS" --home "$RHOME" trust add "$(bl_node_id "$SHOME")" >/dev/null
}

case $WHAT in
small | send)
    if [ "$WHAT" = small ]; then make_small; else make_big; fi
    push_homes
    serve_recorded "$RHOME"
    sync
    record send "$P2PFS" --home "$SHOME" -q send "$SRC" "$(bl_node_id "$RHOME")@$SERVE_ADDR"
    serve_stop
    ;;
import)
    make_small
    "$P2PFS" --home "$WORK/home" init --name profile-import >/dev/null
    sync
    record import "$P2PFS" --home "$WORK/home" -q vault import "$SRC" >/dev/null
    ;;
get)
    make_big
    GHOME=$WORK/serve FHOME=$WORK/fetch
    "$P2PFS" --home "$GHOME" init --name profile-server >/dev/null
    "$P2PFS" --home "$FHOME" init --name profile-fetcher >/dev/null
    "$P2PFS" --home "$GHOME" -q vault import "$SRC" >/dev/null
    "$P2PFS" --home "$GHOME" trust add "$(bl_node_id "$FHOME")" --name profile-fetcher --allow get >/dev/null
    "$P2PFS" --home "$GHOME" vault share big.bin profile-fetcher >/dev/null
    serve_recorded "$GHOME" nopass
    sync
    record get "$P2PFS" --home "$FHOME" -q get "$(bl_node_id "$GHOME")@$SERVE_ADDR" big.bin "$WORK/out.bin"
    serve_stop
    cmp "$SRC" "$WORK/out.bin" || bl_die "the fetched file differs"
    ;;
esac

for data in "$OUT"/perf-*.data; do
    side=$(basename "$data" .data)
    side=${side#perf-}
    {
        echo "# p2pfs profile: $WHAT, side: $side"
        echo "# commit $(bl_rev), $(uname -sr), CPU flags: $(bl_isa)"
        echo "# perf record -F $FREQ; self time, lines >= 1%"
        echo "## by shared object"
        perf report -i "$data" --stdio -q --no-children --sort dso --percent-limit 1 2>/dev/null
        echo "## by symbol"
        perf report -i "$data" --stdio -q --no-children --sort dso,sym --percent-limit 1 2>/dev/null
    } >"$OUT/report-$side.txt"
    cat "$OUT/report-$side.txt"
    echo
done
bl_log "profiles in $OUT"
