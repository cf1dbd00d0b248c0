#!/usr/bin/env bash
# bench-net.sh — benchmark (not a test) of network transfers over loopback,
# in the same run, on the same file, under the same conditions:
#   send  `p2pfs send` → `p2pfs serve` against scp (OpenSSH, AES-256-GCM)
#         uploading to a private sshd;
#   get   `p2pfs get` ← `p2pfs serve` (a shared file pulled out of the serving
#         node's vault into a plain file) against scp downloading the same
#         file from that private sshd (same cipher and options).
#
# What it does
#   1. builds p2pfs in release (skip with BENCH_NO_BUILD=1); installs, when
#      missing, openssh-server and openssh-client (apt-get; `apt-get update`
#      first only if the plain install fails) and GNU time (Debian package
#      `time`, for /usr/bin/time). While installing it makes sure no service
#      gets started (policy-rc.d), so no system sshd appears.
#   2. makes a fresh temporary directory (default under target/, the same file
#      system for the input, the receiving vault and the scp destination) with
#      a random file of BENCH_SIZE_MIB MiB, an sshd host key, a client key
#      pair and an sshd_config of its own (127.0.0.1 on a free port, root
#      login by key only, UsePAM no, StrictModes no, pid file in the temp dir).
#   3. runs BENCH_RUNS repetitions; each run does, in this order (the send
#      half is skipped with BENCH_ONLY=get):
#        p2pfs   fresh receiver and sender homes (init is not timed);
#                the receiver trusts the sender (`trust add`, the usual setup);
#                `/usr/bin/time p2pfs serve --listen 127.0.0.1:0
#                --no-mdns` in the background; then
#                `/usr/bin/time p2pfs send -q FILE NODEID@127.0.0.1:PORT` (which exits
#                0 only once the receiver has committed and fsynced the file);
#                then SIGINT to serve, and GNU time reports its figures.
#        scp     `/usr/bin/time /usr/sbin/sshd -D` (the private sshd) in the
#                background; then `/usr/bin/time scp -c aes256-gcm@openssh.com
#                -o Compression=no FILE root@127.0.0.1:FRESH_PATH`; then
#                `sync FRESH_PATH DIR` (fsync of the file and its directory,
#                timed separately); then SIGTERM to that sshd by its pid.
#      Each timed command runs after an untimed `sync` (so no write-back of an
#      earlier command runs during it) and after its input was read once.
#      Then, unless BENCH_ONLY=send, in the same run:
#        get     (setup once, before run 1, not timed: a serving home that
#                `vault import`s FILE, trusts a fetching home with
#                `trust add ID --allow get` and `vault share`s the file with
#                it; then ONE `p2pfs serve --listen 127.0.0.1:0 --no-mdns`
#                started WITHOUT any passphrase in its environment, under
#                GNU time, that serves every run)
#                the server's vault objects are read once (warm); then
#                `/usr/bin/time p2pfs get -q NODEID@127.0.0.1:PORT input.bin
#                DEST` (exits 0 only once every MAC and the BLAKE3 were
#                checked and DEST was fsynced and published, directory
#                fsynced); the serving daemon's CPU is the delta of its
#                /proc/PID/stat utime+stime over the get (read again until
#                it stops moving after get exits), its peak RSS the VmHWM
#                of the run (reset with `echo 5 > /proc/PID/clear_refs`
#                before it); then `cmp DEST FILE` (every run) and DEST is
#                removed.
#        scp dl  a fresh private sshd as above; `/usr/bin/time scp -c
#                aes256-gcm@openssh.com -o Compression=no
#                root@127.0.0.1:FILE FRESH_PATH`; `sync FRESH_PATH DIR`
#                (timed separately); SIGTERM to that sshd; `cmp` (every
#                run); FRESH_PATH removed.
#   4. prints the median of each figure over the runs and the verdicts on the
#      targets: send: p2pfs throughput >= scp throughput, and peak RSS < 128
#      MiB for the sender and for the receiver; get: p2pfs get throughput >=
#      1.25x scp download throughput.
#
# How each side is measured (wall, CPU = user + sys, peak RSS, by GNU time,
# i.e. wait4() rusage: a process plus all its descendants that were waited for)
#   p2pfs send     the sender process. Wall = the transfer as a user sees it.
#   p2pfs serve    the receiving daemon over its whole life (start-up, one
#                  transfer, shutdown; start-up and shutdown are milliseconds).
#                  Its wall time is meaningless (it idles until stopped).
#   scp client     scp and the ssh process it forks (ssh does the crypto), so
#                  CPU is both and RSS the larger of the two.
#   sshd           a fresh `sshd -D` per run, stopped after the copy. OpenSSH
#                  forks (and re-executes) a child per connection, which forks
#                  the session/sftp-server process; each parent reaps its
#                  child, so when the listener exits GNU time sees the CPU of
#                  every sshd process of that run, and the largest RSS of them.
#                  The script waits until the listener has no children left
#                  before stopping it, so nothing is lost.
#   scp + fsync    scp wall + the wall of `sync DEST DESTDIR` that follows.
#                  p2pfs acknowledges only after fsync (data, index, rename,
#                  directory), scp does not: this row is the like-for-like
#                  durable figure. The target verdict uses plain scp (the
#                  stricter comparison); both are printed.
#   p2pfs get      the fetching process (it does not fork). Wall = the fetch
#                  as a user sees it (connect, list, open the share, pull,
#                  verify, decrypt into DEST, fsync, publish).
#   p2pfs serve    (get) the serving daemon, long-lived: CPU delta and VmHWM
#                  per run from /proc (all its threads), see above. Its GNU
#                  time figures over its whole life are logged at the end.
#   scp download   scp + ssh (client, writes DEST); sshd as for the upload
#                  (reads FILE). scp dl + fsync = like-for-like durable figure.
#   Kernel write-back done by flusher threads is charged to no process.
#
# scp mode: OpenSSH >= 9.0 scp speaks SFTP by default (sshd runs
# `Subsystem sftp internal-sftp`, inside the session process). BENCH_SCP_LEGACY=1
# adds -O (the old scp/rcp protocol) instead.
#
# Page cache: WARM. The input is read once (cat > /dev/null) before every timed
# transfer; outputs stay cached (the machine has plenty of RAM). The same
# for get: the serving vault's files (resp. FILE for the scp download) are
# read once before each timed fetch; caches are never dropped.
#
# Throughput is MiB/s (2^20 bytes per second) of file data, from the median
# wall time. RSS is in MiB.
#
# Settings (environment):
#   BENCH_SIZE_MIB    size of the test file in MiB                (default 1024)
#   BENCH_RUNS        repetitions                                 (default 5)
#   BENCH_TMPDIR      parent of the temporary directory           (default <repo>/target)
#   BENCH_NO_BUILD    1 = use the existing target/release/p2pfs
#   BENCH_P2PFS       FILE: use this p2pfs binary (implies BENCH_NO_BUILD=1)
#   BENCH_ONLY        send | get: run only that half             (default: both)
#   BENCH_STREAMS     `p2pfs send/get --streams N`                (default: p2pfs's default)
#   BENCH_SCP_LEGACY  1 = scp -O (legacy protocol) instead of SFTP
#   BENCH_STRICT      1 = exit 1 when a target is missed          (default: report only)
#   BENCH_RAW         FILE: also write the per-run figures there (TSV)
#
# Usage:  scripts/bench-net.sh
#         BENCH_SIZE_MIB=256 BENCH_RUNS=3 scripts/bench-net.sh
#         BENCH_ONLY=get BENCH_SIZE_MIB=32 BENCH_RUNS=1 scripts/bench-net.sh
#
# Everything it starts (serve, sshd, and the GNU time wrapping them) is stopped
# by pid on exit, also on Ctrl-C; the temporary directory is removed. It never
# touches another sshd.

set -euo pipefail
BL_NAME=bench-net.sh
# shellcheck source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
RUNS=${BENCH_RUNS:-5}
STRICT=${BENCH_STRICT:-0}
RSS_TARGET_MIB=128
GET_TARGET=1.25 # p2pfs get throughput / scp download throughput
case ${BENCH_ONLY:-} in
'') DO_SEND=1 DO_GET=1 ;;
send) DO_SEND=1 DO_GET=0 ;;
get) DO_SEND=0 DO_GET=1 ;;
*) echo "BENCH_ONLY must be send or get (or unset for both)" >&2; exit 2 ;;
esac

case $SIZE_MIB in '' | *[!0-9]* | 0) echo "BENCH_SIZE_MIB must be a positive integer" >&2; exit 2 ;; esac
case $RUNS in '' | *[!0-9]* | 0) echo "BENCH_RUNS must be a positive integer" >&2; exit 2 ;; esac
case ${BENCH_STREAMS:-4} in '' | *[!0-9]* | 0) echo "BENCH_STREAMS must be a positive integer" >&2; exit 2 ;; esac

log() { bl_log "$@"; }
die() { bl_die "$@"; }

# ---------------------------------------------------------------- tools
bl_need_time
bl_need_ssh hard
bl_build_p2pfs

# ---------------------------------------------------------------- work dir
bl_make_work bench-net
FILE=$WORK/input.bin
NAME=input.bin
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

avail_mib=$(bl_avail_mib "$WORK")
# get adds the serving vault's copy, the fetcher's ciphertext partial and
# the published file
[ "$avail_mib" -gt $((SIZE_MIB * (4 + 2 * DO_GET) + 512)) ] || die "not enough disk space in $WORK (${avail_mib} MiB free)"
log "creating ${SIZE_MIB} MiB random file"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$FILE"
sync

export P2PFS_PASSPHRASE=bench-net-passphrase
unset P2PFS_PASSPHRASE_FILE P2PFS_HOME

# ---------------------------------------------------------------- private sshd, serve
bl_sshd_setup

start_sshd() { bl_sshd_start "$WORK/sshd-time.$1"; }
stop_sshd() { bl_sshd_stop "${2:-sshd (server, all processes)}" "$1" "$WORK/sshd-time.$1"; }

start_serve() { # run home
    bl_serve_start "$2" "$WORK/serve-time.$1" "$WORK/serve.out"
    SERVE_PID=$BL_SERVE_PID SERVE_ADDR=$BL_SERVE_ADDR
}

stop_serve() { # run
    bl_serve_stop "$SERVE_PID" "$WORK/serve.out"
    SERVE_PID=
    bl_record_time_file "p2pfs serve (receiver)" "$1" "$WORK/serve-time.$1"
}

# start_get_serve HOME: one serve for every get run, with no passphrase in
# its environment (serving shares needs none).
start_get_serve() {
    bl_serve_start "$1" "$WORK/get-serve-time" "$WORK/get-serve.out" nopass
    GSERVE_PID=$BL_SERVE_PID GSERVE_ADDR=$BL_SERVE_ADDR
}

stop_get_serve() {
    local wall user sys rss
    bl_serve_stop "$GSERVE_PID" "$WORK/get-serve.out"
    GSERVE_PID=
    read -r wall user sys rss < <(tail -n 1 "$WORK/get-serve-time")
    log "p2pfs serve (get), whole life over $RUNS run(s): ${user} user, ${sys} sys, $((rss / 1024)) MiB peak (GNU time)"
}

measure() { bl_measure "$@"; }
timed_sync() { local op=$1 run=$2; shift 2; bl_timed_sync "$op" "$run" sync -- "$@"; }
warm() { bl_warm "$@"; }

# ---------------------------------------------------------------- runs
STREAM_ARGS=()
if [ -n "${BENCH_STREAMS:-}" ]; then STREAM_ARGS=(--streams "$BENCH_STREAMS"); fi
LOADS=()

if [ "$DO_GET" = 1 ]; then
    # serving node: the file in its vault, shared with the fetching node,
    # which may get; the fetcher pins the server (NODEID@addr)
    GHOME=$WORK/get-server
    FHOME=$WORK/get-fetcher
    GDIR=$WORK/get-out
    mkdir "$GDIR"
    log "get setup: importing ${SIZE_MIB} MiB into the serving vault, trust --allow get, share"
    "$P2PFS" --home "$GHOME" init --name bench-get-server >/dev/null
    "$P2PFS" --home "$FHOME" init --name bench-get-fetcher >/dev/null
    "$P2PFS" --home "$GHOME" -q vault import "$FILE" >/dev/null
    "$P2PFS" --home "$GHOME" vault list --json >"$WORK/get-list.json"
    grep -q "\"$NAME\"" "$WORK/get-list.json" || die "the imported file is not in the serving vault: $(cat "$WORK/get-list.json")"
    fid=$("$P2PFS" --home "$FHOME" id --json | sed 's/.*"id":"\([a-z0-9]*\)".*/\1/')
    gid=$("$P2PFS" --home "$GHOME" id --json | sed 's/.*"id":"\([a-z0-9]*\)".*/\1/')
    "$P2PFS" --home "$GHOME" trust add "$fid" --name bench-get-fetcher --allow get >/dev/null
    "$P2PFS" --home "$GHOME" vault share "$NAME" bench-get-fetcher >/dev/null
    start_get_serve "$GHOME"
    log "get setup: serve (no passphrase) pid $GSERVE_PID on $GSERVE_ADDR"
fi

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS (load avg $(cut -d' ' -f1 /proc/loadavg))"
    LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
    if [ "$DO_SEND" = 1 ]; then
        # (a) p2pfs: fresh receiver and sender homes
        rhome=$WORK/recv-$run
        shome=$WORK/send-$run
        "$P2PFS" --home "$rhome" init --name bench-recv >/dev/null
        "$P2PFS" --home "$shome" init --name bench-send >/dev/null
        sid=$("$P2PFS" --home "$shome" id --json | sed 's/.*"id":"\([a-z0-9]*\)".*/\1/')
        "$P2PFS" --home "$rhome" trust add "$sid" >/dev/null
        start_serve "$run" "$rhome"
        warm "$FILE"
        # The receiver's key is given (NODEID@addr), as a user who pinned it would
        # have it: no first-contact question, no key probe in the timing.
        rid=$("$P2PFS" --home "$rhome" id --json | sed 's/.*"id":"\([a-z0-9]*\)".*/\1/')
        measure "p2pfs send (sender)" "$run" "$P2PFS" --home "$shome" -q send "${STREAM_ARGS[@]}" "$FILE" "$rid@$SERVE_ADDR"
        stop_serve "$run"
        if [ "$run" = 1 ]; then
            "$P2PFS" --home "$rhome" vault list --json >"$WORK/list.json"
            grep -q "\"$NAME\"" "$WORK/list.json" || die "the received file is not in the vault: $(cat "$WORK/list.json")"
            "$P2PFS" --home "$rhome" -q vault export "$NAME" "$WORK/export.bin" >/dev/null
            cmp -s "$FILE" "$WORK/export.bin" || die "the file exported from the receiving vault differs from the input"
            rm -f -- "$WORK/export.bin"
            log "  (run 1: received file is in the vault and exports identical)"
        fi
        rm -rf -- "$rhome" "$shome"

        # (b) scp to a fresh path via the private sshd, (c) the same + fsync
        dest_dir=$WORK/scp-$run
        mkdir "$dest_dir"
        start_sshd "$run"
        warm "$FILE"
        measure "scp client (scp+ssh)" "$run" scp "${SCP_OPTS[@]}" "$FILE" "root@127.0.0.1:$dest_dir/$NAME"
        timed_sync "scp + fsync(dest, dir)" "$run" "$dest_dir/$NAME" "$dest_dir"
        stop_sshd "$run"
        if [ "$run" = 1 ]; then
            cmp -s "$FILE" "$dest_dir/$NAME" || die "the scp copy differs from the input"
        fi
        rm -rf -- "$dest_dir"
    fi

    if [ "$DO_GET" = 1 ]; then
        # (d) p2pfs get from the long-lived serve into a plain file
        gdest=$GDIR/$NAME
        rm -f -- "$gdest"
        find "$GHOME" -type f -exec cat -- {} + >/dev/null # warm: the served objects
        sync
        bl_proc_begin "$GSERVE_PID" # VmHWM reset to the current RSS, CPU ticks noted
        measure "p2pfs get (fetcher)" "$run" "$P2PFS" --home "$FHOME" -q get "${STREAM_ARGS[@]}" "$gid@$GSERVE_ADDR" "$NAME" "$gdest"
        bl_proc_record "p2pfs serve (get server)" "$run" "$GSERVE_PID"
        cmp -s "$FILE" "$gdest" || die "run $run: the file fetched by p2pfs get differs from the input"
        log "  (fetched file identical to the input; fetcher home now $(du -sm "$FHOME" | cut -f1) MiB)"
        rm -f -- "$gdest"

        # (e) scp downloading the same file from a fresh private sshd, (f) + fsync
        dest_dir=$WORK/scpdl-$run
        mkdir "$dest_dir"
        start_sshd "$run"
        warm "$FILE"
        measure "scp download (scp+ssh)" "$run" scp "${SCP_OPTS[@]}" "root@127.0.0.1:$FILE" "$dest_dir/$NAME"
        timed_sync "scp dl + fsync(dest, dir)" "$run" "$dest_dir/$NAME" "$dest_dir"
        stop_sshd "$run" "sshd (download, all processes)"
        cmp -s "$FILE" "$dest_dir/$NAME" || die "run $run: the scp download differs from the input"
        rm -rf -- "$dest_dir"
    fi
done

if [ "$DO_GET" = 1 ]; then stop_get_serve; fi

# ---------------------------------------------------------------- report
# per-run totals of both sides
awk -F'\t' '
$1 == "p2pfs send (sender)"          { pw[$2] = $3; pc[$2] += $4 + $5 }
$1 == "p2pfs serve (receiver)"       { pc[$2] += $4 + $5 }
$1 == "scp client (scp+ssh)"         { sw[$2] = $3; sc[$2] += $4 + $5 }
$1 == "sshd (server, all processes)" { sc[$2] += $4 + $5 }
$1 == "p2pfs get (fetcher)"          { gw[$2] = $3; gc[$2] += $4 + $5 }
$1 == "p2pfs serve (get server)"     { gc[$2] += $4 + $5 }
$1 == "scp download (scp+ssh)"       { dw[$2] = $3; dc[$2] += $4 + $5 }
$1 == "sshd (download, all processes)" { dc[$2] += $4 + $5 }
END {
    for (r in pw) printf "p2pfs both sides\t%s\t%s\t%s\t0\t0\n", r, pw[r], pc[r]
    for (r in sw) printf "scp both sides (scp+ssh+sshd)\t%s\t%s\t%s\t0\t0\n", r, sw[r], sc[r]
    for (r in gw) printf "p2pfs get both sides\t%s\t%s\t%s\t0\t0\n", r, gw[r], gc[r]
    for (r in dw) printf "scp dl both sides (+sshd)\t%s\t%s\t%s\t0\t0\n", r, dw[r], dc[r]
}' "$RES" | sort -t $'\t' -k1,1 -k2,2n >"$WORK/totals.tsv"
cat "$WORK/totals.tsv" >>"$RES"

if [ -n "${BENCH_RAW:-}" ]; then
    { printf 'op\trun\twall_s\tuser_s\tsys_s\tmaxrss_kib\n'; cat "$RES"; } >"$BENCH_RAW"
    log "per-run figures written to $BENCH_RAW"
fi

isa=$(bl_isa)
echo
echo "p2pfs network benchmark — $(date -u +%Y-%m-%dT%H:%MZ)"
echo "  file:       ${SIZE_MIB} MiB random, $RUNS runs, loopback (127.0.0.1), medians shown"
echo "  page cache: WARM — the input is read once before every timed transfer; untimed sync before each"
echo "  machine:    $(nproc) cores, $(bl_cpu_model), $(bl_fs_of "$WORK") file system"
echo "  CPU ISA:    ${isa:-?}"
echo "  load avg:   $LOAD_START at start, per run: ${LOADS[*]}, $(cut -d' ' -f1-3 /proc/loadavg) at end (other work on the machine skews the figures)"
if [ -n "${BENCH_P2PFS:-}" ]; then
    echo "  p2pfs:      $P2PFS (BENCH_P2PFS; $("$P2PFS" --version 2>/dev/null || echo '?')), send/get --streams ${BENCH_STREAMS:-default}"
else
    echo "  p2pfs:      $(bl_rev), send/get --streams ${BENCH_STREAMS:-default}"
fi
echo "  measured:   $([ "$DO_SEND" = 1 ] && printf 'send vs scp upload; ')$([ "$DO_GET" = 1 ] && printf 'get vs scp download (one serve, no passphrase, for all runs; fetched files cmp-checked every run)')"
echo "  scp:        $(ssh -V 2>&1), -c aes256-gcm@openssh.com -o Compression=no, $SCP_MODE; sshd $(dpkg-query -W -f '${Version}' openssh-server 2>/dev/null || echo '?')"
echo

awk -F'\t' -v size="$SIZE_MIB" -v rss_target="$RSS_TARGET_MIB" -v strict="$STRICT" -v get_target="$GET_TARGET" "$BL_AWK_MEDIAN"'
{
    if (!($1 in seen)) { seen[$1] = 1; order[++nops] = $1 }
    wall[$1] = wall[$1] " " $3
    cpu[$1] = cpu[$1] " " ($4 + $5)
    usr[$1] = usr[$1] " " $4
    sy[$1] = sy[$1] " " $5
    rss[$1] = rss[$1] " " ($6 / 1024)
    maxrss[$1] = ($6 / 1024 > maxrss[$1]) ? $6 / 1024 : maxrss[$1]
}
END {
    printf "%-30s %7s %7s %7s %7s %7s %8s %8s\n", "side / operation", "wall s", "MiB/s", "CPU s", "user s", "sys s", "RSS MiB", "RSS max"
    printf "%-30s %7s %7s %7s %7s %7s %8s %8s\n", "----------------", "------", "-----", "-----", "------", "-----", "-------", "-------"
    for (k = 1; k <= nops; k++) {
        op = order[k]
        w = median(wall[op]); c = median(cpu[op])
        server = (op ~ /^(p2pfs serve|sshd)/); total = (op ~ /both sides/)
        ws = server ? "-" : sprintf("%.2f", w)
        thr = server ? "-" : sprintf("%.0f", size / w)
        us = total ? "-" : sprintf("%.2f", median(usr[op]))
        ss = total ? "-" : sprintf("%.2f", median(sy[op]))
        rs = total ? "-" : sprintf("%.1f", median(rss[op]))
        rm = total ? "-" : sprintf("%.1f", maxrss[op])
        mw[op] = w; mr[op] = maxrss[op]; mc[op] = c
        printf "%-30s %7s %7s %7.2f %7s %7s %8s %8s\n", op, ws, thr, c, us, ss, rs, rm
    }
    print ""
    print "(medians over runs; MiB/s = file size / median wall; CPU = user + sys; RSS = peak resident set;"
    print " serve and sshd run for the whole transfer, their wall time is the client row above them)"
    print ""
    ok_thr = ok_rs = ok_rr = ok_get = 1
    if ("p2pfs send (sender)" in mw) {
    p = mw["p2pfs send (sender)"]; s = mw["scp client (scp+ssh)"]; sf = mw["scp + fsync(dest, dir)"]
    ok_thr = (size / p) >= (size / s)
    printf "p2pfs / scp throughput:            %.2fx  (%.0f vs %.0f MiB/s; target >= 1.0x: %s)\n", s / p, size / p, size / s, ok_thr ? "MET" : "MISSED"
    printf "p2pfs / (scp + fsync) throughput:  %.2fx  (%.0f vs %.0f MiB/s; both durable, for context)\n", sf / p, size / p, size / sf
    printf "CPU both sides, p2pfs / scp:       %.2fx  (%.2f vs %.2f s)\n", mc["p2pfs both sides"] / mc["scp both sides (scp+ssh+sshd)"], mc["p2pfs both sides"], mc["scp both sides (scp+ssh+sshd)"]
    ok_rs = mr["p2pfs send (sender)"] < rss_target
    ok_rr = mr["p2pfs serve (receiver)"] < rss_target
    printf "peak RSS sender (max over runs):   %.1f MiB  (target < %d MiB: %s)\n", mr["p2pfs send (sender)"], rss_target, ok_rs ? "MET" : "MISSED"
    printf "peak RSS receiver (max over runs): %.1f MiB  (target < %d MiB: %s)\n", mr["p2pfs serve (receiver)"], rss_target, ok_rr ? "MET" : "MISSED"
    }
    if ("p2pfs get (fetcher)" in mw) {
        if ("p2pfs send (sender)" in mw) print ""
        g = mw["p2pfs get (fetcher)"]; d = mw["scp download (scp+ssh)"]; df = mw["scp dl + fsync(dest, dir)"]
        gb = mc["p2pfs get both sides"]; db = mc["scp dl both sides (+sshd)"]
        ok_get = (d / g) >= get_target
        printf "%-22s %9s %9s %9s %11s %11s\n", "get vs scp download", "MiB/s", "wall s", "CPU s", "RSS client", "RSS server"
        printf "%-22s %9s %9s %9s %11s %11s\n", "-------------------", "-----", "------", "-----", "----------", "----------"
        printf "%-22s %9.0f %9.2f %9.2f %11.1f %11.1f\n", "p2pfs get", size / g, g, gb, mr["p2pfs get (fetcher)"], mr["p2pfs serve (get server)"]
        printf "%-22s %9.0f %9.2f %9.2f %11.1f %11.1f\n", "scp download", size / d, d, db, mr["scp download (scp+ssh)"], mr["sshd (download, all processes)"]
        printf "%-22s %8.2fx %8.2fx %8.2fx %10.2fx %10.2fx\n", "p2pfs / scp", d / g, g / d, gb / db, \
            mr["p2pfs get (fetcher)"] / mr["scp download (scp+ssh)"], mr["p2pfs serve (get server)"] / mr["sshd (download, all processes)"]
        print "(MiB/s and wall: medians; CPU s: median of both sides together; RSS: peak, max over runs)"
        print ""
        printf "get / scp download throughput:            %.2fx  (%.0f vs %.0f MiB/s; target >= %.2fx: %s)\n", d / g, size / g, size / d, get_target, ok_get ? "MET" : "MISSED"
        printf "get / (scp download + fsync) throughput:  %.2fx  (%.0f vs %.0f MiB/s; both durable, for context)\n", df / g, size / g, size / df
    }
    if (strict == 1 && !(ok_thr && ok_rs && ok_rr && ok_get)) exit 1
}' "$RES"
