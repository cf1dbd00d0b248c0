#!/usr/bin/env bash
# bench.sh — THE benchmark of p2pfs (not a test): every workload, side by side
# with its baselines, in one run, on the same files, under the same
# conditions; medians of BENCH_RUNS runs; writes docs/BENCHMARKS.md and the
# chart docs/bench.png (scripts/bench-report.py), and prints every figure with
# the CPU flags on stdout.
#
# Workloads (BENCH_ONLY=comma list of names or numbers; default all)
#   1 file        a FILE_MIB (1 GiB) random file: `p2pfs send` → `p2pfs serve`
#                 vs scp upload (and scp + fsync) vs sendme; `p2pfs get` from a
#                 serve with no passphrase vs scp download (and + fsync)
#   2 big         a BIG_GIB (10 GiB) random file: `p2pfs send` (peak RSS of
#                 both sides must stay flat, < 64 MiB) vs scp upload; skipped
#                 with the reason when the disk has not 2 × the size free
#   3 small       SMALL_N (10,000) × SMALL_KIB (4) KiB files in one folder:
#                 `p2pfs send DIR` vs `tar c | ssh tar x` (+ sync), scp -r,
#                 rsync -a over ssh, sendme (files/s)
#   4 medium      MED_N (100) × MED_MIB (10) MiB files: `p2pfs send DIR` vs
#                 scp -r, tar | ssh tar x, rsync, sendme
#   5 vault       `p2pfs vault import` of the small-file folder vs cp -r + sync
#   6 conn        connection set-up, CONN_N (100) connections per run, each
#                 timed: `p2pfs remote list NODEID@127.0.0.1:PORT` (QUIC + TLS
#                 + Noise IK + key confirmation + a listing request, the
#                 smallest request p2pfs has) vs `ssh HOST true` and vs
#                 `ssh -s HOST sftp` (no remote shell start-up); and one 1 KiB
#                 file end to end: `p2pfs send` vs scp (+ fsync)
#   7 concurrent  CONC_SENDERS (16) senders, each its own node (trusted by the
#                 receiver) with CONC_FILES (100) × 4 KiB files, started
#                 together into one `p2pfs serve`: wall, files/s, failures and
#                 their error lines
# Executed in the order small, vault, concurrent, conn, medium, file, big: the
# many-file workloads first, on a file system that has seen no mass delete
# from this run; every small-file run writes into a fresh directory (a new
# receiver home, a new destination) that is removed only when the script ends.
#
# How it measures (the common code is scripts/bench-lib.sh)
#   * Every timed command runs under GNU time (user, sys, peak RSS of the
#     process and its waited-for descendants; wall from bash's EPOCHREALTIME
#     around it, as %e has 10 ms steps) after an untimed `sync`; its input
#     was read once before (page cache WARM).
#   * p2pfs push: fresh receiver and sender homes per run (init, trust add:
#     not timed), a fresh `p2pfs serve --listen 127.0.0.1:0 --no-mdns` under
#     GNU time (its figures are its whole life: start, the transfer, stop),
#     `p2pfs send -q PATH NODEID@127.0.0.1:PORT` timed; send exits 0 only once
#     the receiver has committed and fsynced everything.
#   * ssh baselines: a private sshd (127.0.0.1, a port of its own, config and
#     keys in the temp dir) started per measurement under GNU time, so its
#     figures are every sshd process of that transfer (sftp-server, remote tar
#     or rsync included); scp -c aes256-gcm@openssh.com -o Compression=no.
#     "+ sync" rows add the wall time of `sync -- FILE DIR` (one file) or
#     `sync -f DIR` (syncfs, a tree) run right after: the durable figure, like
#     p2pfs's acknowledgement. Targets use the rows the target table names.
#   * long-lived servers (the serve of get and conn, the sendme sender): CPU
#     is the delta of /proc/PID/stat utime+stime over the measured commands
#     (read until it stops moving), peak RSS their VmHWM reset with
#     `echo 5 > /proc/PID/clear_refs` before.
#   * sendme: `sendme send --relay disabled --ticket-type addresses
#     --magic-ipv4-addr 127.0.0.1:0 PATH` once per workload (it hashes and
#     imports the data before it prints the ticket: not timed, logged), then
#     per run `sendme receive --relay disabled TICKET` in a fresh directory,
#     timed (+ sync -f); sendme does not fsync.
#   * Correctness: run 1 of every push checks what arrived (file count in the
#     receiving vault or destination; one-file workloads cmp the copy or the
#     vault export); get is cmp-checked every run.
#
# Settings (environment)
#   BENCH_RUNS          repetitions (median reported)                    (5)
#   BENCH_QUICK         1 = everything scaled down for a quick check
#   BENCH_ONLY          workloads, e.g. small,vault or 3,5                (all)
#   BENCH_SKIP          baselines not to run: scp,tar,rsync,sendme,cp     (none)
#   BENCH_FILE_MIB      size of the one-file workload in MiB             (1024; quick 64)
#   BENCH_BIG_GIB       size of the big file in GiB                      (10)
#   BENCH_BIG_MIB       … in MiB instead (overrides BENCH_BIG_GIB)       (quick 256)
#   BENCH_SMALL_N       small files                                      (10000; quick 500)
#   BENCH_SMALL_KIB     size of each small file in KiB                   (4)
#   BENCH_MED_N         medium files                                     (100; quick 10)
#   BENCH_MED_MIB       size of each medium file in MiB                  (10)
#   BENCH_CONN_N        connections per run (conn and 1 KiB file)        (100; quick 10)
#   BENCH_CONC_SENDERS  concurrent senders                               (16)
#   BENCH_CONC_FILES    files per concurrent sender                      (100; quick 10)
#   BENCH_NOTE          a sentence for BENCHMARKS.md (e.g. "the machine was shared")
#   BENCH_OUT           where BENCHMARKS.md and bench.png go             (<repo>/docs)
#   BENCH_TMPDIR        parent of the temporary directory                (<repo>/target)
#   BENCH_NO_BUILD      1 = use the existing target/release/p2pfs
#   BENCH_P2PFS         FILE: use this p2pfs binary (no build)
#   BENCH_SCP_LEGACY    1 = scp -O (legacy protocol) instead of SFTP
#   BENCH_RAW           FILE: also keep the per-run figures there (TSV; FILE.meta: the facts)
#
# Usage:  scripts/bench.sh
#         BENCH_QUICK=1 BENCH_RUNS=1 scripts/bench.sh
#         BENCH_ONLY=small,vault BENCH_RUNS=3 scripts/bench.sh
#
# Everything it starts (serve, sshd, sendme, and the GNU time wrapping them)
# is stopped by pid on exit and on Ctrl-C; the temporary directory is
# removed. It never touches another sshd.

set -euo pipefail
BL_NAME=bench.sh
# shellcheck source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

REPO=$BL_REPO
CMDLINE=
for v in $(compgen -e | grep -E '^BENCH_[A-Z_]+$' | sort); do
    if [[ ${!v} =~ ^[A-Za-z0-9_./:,=+-]*$ ]]; then CMDLINE+="$v=${!v} "; else CMDLINE+="$v='${!v//\'/\'\\\'\'}' "; fi
done
CMDLINE+="scripts/bench.sh${*:+ $*}"

posint() { case $2 in '' | *[!0-9]* | 0) echo "bench.sh: $1 must be a positive integer (got '$2')" >&2; exit 2 ;; esac; }
QUICK=${BENCH_QUICK:-0}
q() { if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi; }
RUNS=${BENCH_RUNS:-5}
FILE_MIB=${BENCH_FILE_MIB:-$(q 1024 64)}
BIG_MIB=${BENCH_BIG_MIB:-$(( ${BENCH_BIG_GIB:-$(q 10 0)} * 1024 ))}
[ "$BIG_MIB" != 0 ] || BIG_MIB=256
SMALL_N=${BENCH_SMALL_N:-$(q 10000 500)}
SMALL_KIB=${BENCH_SMALL_KIB:-4}
MED_N=${BENCH_MED_N:-$(q 100 10)}
MED_MIB=${BENCH_MED_MIB:-10}
CONN_N=${BENCH_CONN_N:-$(q 100 10)}
CONC_SENDERS=${BENCH_CONC_SENDERS:-16}
CONC_FILES=${BENCH_CONC_FILES:-$(q 100 10)}
OUT=${BENCH_OUT:-$REPO/docs}
for v in RUNS FILE_MIB BIG_MIB SMALL_N SMALL_KIB MED_N MED_MIB CONN_N CONC_SENDERS CONC_FILES; do posint "$v" "${!v}"; done

# ---------------------------------------------------------------- workloads
ORDER=(small vault concurrent conn medium file big)
ONLY=,
for w in $(tr ',' ' ' <<<"${BENCH_ONLY:-file,big,small,medium,vault,conn,concurrent}"); do
    case $w in
    1 | file) ONLY+=file, ;;
    2 | big) ONLY+=big, ;;
    3 | small) ONLY+=small, ;;
    4 | medium) ONLY+=medium, ;;
    5 | vault) ONLY+=vault, ;;
    6 | conn) ONLY+=conn, ;;
    7 | concurrent) ONLY+=concurrent, ;;
    *) echo "bench.sh: unknown workload '$w' in BENCH_ONLY (file big small medium vault conn concurrent, or 1-7)" >&2; exit 2 ;;
    esac
done
want() { [[ $ONLY == *",$1,"* ]]; }

# ---------------------------------------------------------------- tools, work dir
bl_need_time
bl_build_p2pfs
bl_make_work bench
META=$WORK/meta.tsv
: >"$META"
# meta KEY FIELD...: one line of facts for the report (tabs and newlines flattened)
meta() {
    local out=$1 f
    shift
    for f in "$@"; do out+=$'\t'$(tr '\t\n' '  ' <<<"$f" | sed 's/ *$//'); done
    printf '%s\n' "$out" >>"$META"
}
# run_log WL RUN TEXT: the start of a run on stderr, with the load average
# (1 min), which also goes to the report
run_log() {
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    bl_log "$1: run $2/$RUNS ($3; load $load)"
    meta load "$1" "$2" "$load"
}
# skip WHAT REASON: a baseline or workload that is not measured, and why
skip() { bl_log "SKIPPED $1: $2"; meta skip "$1" "$2"; }
# fail WL RUN WHAT OUTFILE: record the last lines a failed command printed
# (the error lines when there are any, else the last five lines)
fail() {
    local line
    grep -i -E 'error|refused|fail|busy|lost|denied|timed out|timeout' "$4" | tail -n 5 >"$WORK/fail-lines" || true
    [ -s "$WORK/fail-lines" ] || grep -v '^[[:space:]]*$' "$4" | tail -n 5 >"$WORK/fail-lines" || true
    bl_log "  FAILED $3 ($1, run $2): $(tr '\n' ' ' <"$WORK/fail-lines")"
    while IFS= read -r line; do meta fail "$1" "$2" "$3" "$line"; done <"$WORK/fail-lines"
}

export P2PFS_PASSPHRASE=bench-passphrase
unset P2PFS_PASSPHRASE_FILE P2PFS_HOME

ISA=$(bl_isa)
meta machine cpu "$(bl_cpu_model)"
meta machine cores "$(nproc)"
meta machine flags "$ISA"
meta machine kernel "$(uname -srm)"
meta machine fs "$(bl_fs_of "$WORK") ($(df -P "$WORK" | awk 'NR==2 {print $1}'), mounted $(findmnt -n -o OPTIONS -T "$WORK" 2>/dev/null || echo '?'))"
meta machine mem "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
meta machine commit "$(bl_rev)"
meta machine p2pfs "$("$P2PFS" --version)"
meta machine date "$(date -u +%Y-%m-%dT%H:%MZ)"
meta machine cmdline "$CMDLINE"
meta machine runs "$RUNS"
meta machine quick "$QUICK"
meta machine load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta machine note "${BENCH_NOTE:-}"
bl_log "CPU flags: $ISA"

# ---------------------------------------------------------------- baselines
declare -A BASE=()
skipped_by_user() { [[ ,${BENCH_SKIP:-}, == *",$1,"* ]]; }
for b in scp tar rsync sendme cp; do
    if skipped_by_user "$b"; then skip "$b" "BENCH_SKIP"; else BASE[$b]=1; fi
done
have() { [ -n "${BASE[$1]:-}" ]; }
if have scp || have tar || have rsync; then
    if bl_need_ssh soft; then
        bl_sshd_setup
        meta machine ssh "$(ssh -V 2>&1), -c aes256-gcm@openssh.com -o Compression=no, $SCP_MODE"
    else
        for b in scp tar rsync; do have "$b" && skip "$b" "openssh-server/openssh-client could not be installed"; unset "BASE[$b]"; done
    fi
fi
if have rsync && ! command -v rsync >/dev/null; then
    bl_apt_install rsync || true
    command -v rsync >/dev/null || { skip rsync "apt-get install rsync failed"; unset "BASE[rsync]"; }
fi
if have rsync; then meta machine rsync "$(rsync --version | head -n1)"; fi
if have tar; then meta machine tar "$(tar --version | head -n1)"; fi
if have sendme; then
    if ! bl_cargo_install sendme; then
        skip sendme "cargo install sendme --locked failed (offline?)"
        unset "BASE[sendme]"
    else
        meta machine sendme "$(sendme --version 2>&1 | head -n1), --relay disabled, 127.0.0.1 ticket"
    fi
fi
SENDME_OPTS=(--relay disabled --no-progress)

# ---------------------------------------------------------------- helpers
warm_tree() { find "$@" -type f -exec cat -- {} + >/dev/null; }
vault_count() { "$P2PFS" --home "$1" vault list --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'; }
files_in() { find "$1" -type f | wc -l; }
# scale_last N: divide the CPU seconds of the last result line by N (a server
# measured over a batch of N connections: per-connection figures)
scale_last() {
    local last
    last=$(tail -n 1 "$RES")
    sed -i '$d' "$RES"
    awk -F'\t' -v n="$1" -v OFS='\t' '{ $4 = sprintf("%.4f", $4 / n); $5 = sprintf("%.4f", $5 / n); print }' <<<"$last" >>"$RES"
}
# make_files DIR N KIB: N files of KIB KiB of random data in DIR (one pass of split)
make_files() {
    mkdir -p "$1"
    head -c $(($2 * $3 * 1024)) /dev/urandom | split -b "$3K" -a 6 -d - "$1/f"
    sync
}

# new_pair TAG: fresh receiver and sender homes WORK/TAG-recv, WORK/TAG-send;
# the receiver trusts the sender (send, get). Sets RHOME SHOME RID.
new_pair() {
    RHOME=$WORK/$1-recv SHOME=$WORK/$1-send
    "$P2PFS" --home "$RHOME" init --name bench-recv >/dev/null
    "$P2PFS" --home "$SHOME" init --name bench-send >/dev/null
    "$P2PFS" --home "$RHOME" trust add "$(bl_node_id "$SHOME")" --allow send,get >/dev/null
    RID=$(bl_node_id "$RHOME")
}

# p2p_send WL RUN TAG EXPECT PATH...: fresh pair and serve, timed `p2pfs send`;
# records WL:p2pfs:client and WL:p2pfs:server; EXPECT = files the vault must
# hold afterwards (checked in run 1). Returns send's status.
p2p_send() {
    local wl=$1 run=$2 tag=$3 expect=$4 rc=0 spid addr n
    shift 4
    new_pair "$tag"
    bl_serve_start "$RHOME" "$WORK/$tag.serve-time" "$WORK/$tag.serve-out"
    spid=$BL_SERVE_PID addr=$BL_SERVE_ADDR
    warm_tree "$@"
    bl_try_measure "$wl:p2pfs:client" "$run" "$P2PFS" --home "$SHOME" -q send "$@" "$RID@$addr" || rc=$?
    bl_serve_stop "$spid" "$WORK/$tag.serve-out"
    if [ "$rc" != 0 ]; then
        fail "$wl" "$run" "p2pfs send (exit $rc)" "$WORK/cmd.out"
        grep -i -E 'error|refus|fail' "$WORK/$tag.serve-out" >"$WORK/serve-err" || true
        [ -s "$WORK/serve-err" ] && fail "$wl" "$run" "p2pfs serve (receiver)" "$WORK/serve-err"
        return "$rc"
    fi
    bl_record_time_file "$wl:p2pfs:server" "$run" "$WORK/$tag.serve-time"
    if [ "$run" = 1 ]; then
        n=$(vault_count "$RHOME")
        [ "$n" = "$expect" ] || bl_die "$wl: the receiving vault holds $n files, $expect were sent"
    fi
}

# ssh_copy WL TOOL RUN SYNC-TARGET CMD...: a fresh private sshd, timed CMD,
# timed `sync` of SYNC-TARGET (a file: fsync of it and its directory; a
# directory: syncfs) as WL:TOOL+sync, the sshd's figures as WL:TOOL:server.
ssh_copy() {
    local wl=$1 tool=$2 run=$3 target=$4 rc=0
    shift 4
    bl_sshd_start "$WORK/sshd-time"
    bl_try_measure "$wl:$tool:client" "$run" "$@" || rc=$?
    if [ "$rc" = 0 ]; then
        if [ -d "$target" ]; then
            bl_timed_sync "$wl:$tool+sync:client" "$run" sync -f "$target"
        else
            bl_timed_sync "$wl:$tool+sync:client" "$run" sync -- "$target" "$(dirname "$target")"
        fi
    fi
    bl_sshd_stop "$wl:$tool:server" "$run" "$WORK/sshd-time"
    if [ "$rc" != 0 ]; then
        sed -i '$d' "$RES" # no server line without a client line
        fail "$wl" "$run" "$tool (exit $rc)" "$WORK/cmd.out"
    fi
    return "$rc"
}

# sendme_start WL PATH: a sendme sender for PATH in its own directory, serving
# until stopped; sets SENDME_PID and SENDME_TICKET. Returns 1 (and records
# the skip) when it gives no ticket.
sendme_start() {
    local dir=$WORK/sendme-send-$1 out=$WORK/sendme-$1.out t0 t1 i
    mkdir -p "$dir"
    t0=$(date +%s.%N)
    BL_BG_KIND=sendme bl_bg_start INT "$WORK/sendme-$1.time" "$out" env -C "$dir" sendme send "${SENDME_OPTS[@]}" \
        --ticket-type addresses --magic-ipv4-addr 127.0.0.1:0 "$2" || { skip "sendme ($1)" "sendme send did not start: $(tail -n 2 "$out")"; return 1; }
    SENDME_PID=$BL_PID SENDME_TICKET=
    for i in $(seq 1 6000); do
        SENDME_TICKET=$(sed -n 's/^sendme receive \([a-z0-9]*\)$/\1/p' "$out" | head -n1)
        [ -n "$SENDME_TICKET" ] && break
        kill -0 "$SENDME_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$SENDME_TICKET" ]; then
        skip "sendme ($1)" "sendme send gave no ticket: $(tail -n 2 "$out")"
        bl_bg_stop "$SENDME_PID"
        return 1
    fi
    t1=$(date +%s.%N)
    meta note "$1" "sendme send hashed and imported its input in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s before it printed the ticket (not in its figures)"
}

# sendme_recv WL RUN DEST SYNC-TARGET: timed `sendme receive` into DEST (made
# here), + sync, the sender's /proc delta as WL:sendme:server.
sendme_recv() {
    local wl=$1 run=$2 dest=$3 target=$4 rc=0 wall
    mkdir -p "$dest"
    bl_proc_begin "$SENDME_PID"
    bl_try_measure "$wl:sendme:client" "$run" env -C "$dest" sendme receive "${SENDME_OPTS[@]}" "$SENDME_TICKET" || rc=$?
    if [ "$rc" != 0 ]; then fail "$wl" "$run" "sendme receive (exit $rc)" "$WORK/cmd.out"; return "$rc"; fi
    wall=$(tail -n 1 "$RES" | cut -f3)
    if [ -d "$target" ]; then
        bl_timed_sync "$wl:sendme+sync:client" "$run" sync -f "$target"
    else
        bl_timed_sync "$wl:sendme+sync:client" "$run" sync -- "$target" "$dest"
    fi
    bl_proc_record "$wl:sendme:server" "$run" "$SENDME_PID" "$wall"
}

# tree baselines of one run: TOOLS to run on SRC (a directory) into fresh
# destinations under WORK/WL-RUN-TOOL; KEEP=0 removes them after the run.
tree_baselines() { # WL RUN SRC N KEEP TOOL...
    local wl=$1 run=$2 src=$3 n=$4 keep=$5 tool d
    shift 5
    for tool in "$@"; do
        have "$tool" || continue
        d=$WORK/$wl-$run-$tool
        case $tool in
        scp)
            mkdir "$d"
            warm_tree "$src"
            ssh_copy "$wl" scp "$run" "$d" scp -r "${SCP_OPTS[@]}" "$src" "root@127.0.0.1:$d/" || true
            ;;
        tar)
            mkdir "$d"
            warm_tree "$src"
            # shellcheck disable=SC2016
            ssh_copy "$wl" tar "$run" "$d" bash -c 'tar cf - -C "$1" "$2" | ssh "${@:4}" root@127.0.0.1 "tar xf - -C $3"' \
                tar "$(dirname "$src")" "$(basename "$src")" "$d" "${SSH_OPTS[@]}" || true
            ;;
        rsync)
            mkdir "$d"
            warm_tree "$src"
            ssh_copy "$wl" rsync "$run" "$d" rsync -a -e "$SSH_CMD" "$src" "root@127.0.0.1:$d/" || true
            ;;
        sendme)
            [ -n "${SENDME_TICKET:-}" ] || continue
            sendme_recv "$wl" "$run" "$d" "$d" || true
            ;;
        esac
        if [ "$run" = 1 ] && [ -d "$d" ]; then
            [ "$(files_in "$d")" = "$n" ] || bl_die "$wl: $tool delivered $(files_in "$d") files, $n were sent"
        fi
        if [ "$keep" = 0 ]; then rm -rf -- "$d"; fi
    done
}

SMALL_SRC=$WORK/small-src
small_src() {
    [ -d "$SMALL_SRC" ] && return 0
    bl_log "creating $SMALL_N files of $SMALL_KIB KiB"
    make_files "$SMALL_SRC" "$SMALL_N" "$SMALL_KIB"
}

stop_sendme() {
    if [ -n "${SENDME_PID:-}" ]; then bl_bg_stop "$SENDME_PID"; fi
    SENDME_PID='' SENDME_TICKET=''
}

# ---------------------------------------------------------------- 3 small
run_small() {
    local run
    small_src
    meta workload small files "$SMALL_N" bytes $((SMALL_N * SMALL_KIB * 1024))
    SENDME_TICKET=
    if have sendme; then sendme_start small "$SMALL_SRC" || true; fi
    for run in $(seq 1 "$RUNS"); do
        run_log small "$run" "$SMALL_N × $SMALL_KIB KiB"
        p2p_send small "$run" "small-$run" "$SMALL_N" "$SMALL_SRC" || true
        tree_baselines small "$run" "$SMALL_SRC" "$SMALL_N" 1 tar scp rsync sendme
    done
    stop_sendme
}

# ---------------------------------------------------------------- 5 vault
run_vault() {
    local run home d n
    small_src
    meta workload vault files "$SMALL_N" bytes $((SMALL_N * SMALL_KIB * 1024))
    for run in $(seq 1 "$RUNS"); do
        run_log vault "$run" "import of $SMALL_N × $SMALL_KIB KiB"
        home=$WORK/vault-$run
        "$P2PFS" --home "$home" init --name bench-vault >/dev/null
        warm_tree "$SMALL_SRC"
        if bl_try_measure "vault:p2pfs:client" "$run" "$P2PFS" --home "$home" -q vault import "$SMALL_SRC"; then
            if [ "$run" = 1 ]; then
                n=$(vault_count "$home")
                [ "$n" = "$SMALL_N" ] || bl_die "vault: the vault holds $n files after import, $SMALL_N expected"
            fi
        else
            fail vault "$run" "p2pfs vault import" "$WORK/cmd.out"
        fi
        if have cp; then
            d=$WORK/vault-$run-cp
            warm_tree "$SMALL_SRC"
            bl_measure "vault:cp:client" "$run" cp -r "$SMALL_SRC" "$d"
            bl_timed_sync "vault:cp+sync:client" "$run" sync -f "$d"
        fi
    done
}

# ---------------------------------------------------------------- 7 concurrent
run_concurrent() {
    local run i rc t0 t1 spid addr go ok failed stored usum ssum rmax wall user sys rss
    local srcs=() pids=() homes=()
    meta workload concurrent files $((CONC_SENDERS * CONC_FILES)) bytes $((CONC_SENDERS * CONC_FILES * 4096)) senders "$CONC_SENDERS"
    bl_log "concurrent: creating $CONC_SENDERS × $CONC_FILES files of 4 KiB"
    for i in $(seq 1 "$CONC_SENDERS"); do
        srcs[i]=$WORK/conc-src/c$i
        make_files "${srcs[i]}" "$CONC_FILES" 4
    done
    for run in $(seq 1 "$RUNS"); do
        run_log concurrent "$run" "$CONC_SENDERS senders × $CONC_FILES files into one serve"
        RHOME=$WORK/conc-$run-recv
        "$P2PFS" --home "$RHOME" init --name bench-recv >/dev/null
        RID=$(bl_node_id "$RHOME")
        for i in $(seq 1 "$CONC_SENDERS"); do
            homes[i]=$WORK/conc-$run-send$i
            "$P2PFS" --home "${homes[i]}" init --name "bench-send$i" >/dev/null
            "$P2PFS" --home "$RHOME" trust add "$(bl_node_id "${homes[i]}")" >/dev/null
        done
        bl_serve_start "$RHOME" "$WORK/conc-$run.serve-time" "$WORK/conc-$run.serve-out"
        spid=$BL_SERVE_PID addr=$BL_SERVE_ADDR
        warm_tree "$WORK/conc-src"
        sync
        # every sender waits for the file $go, then execs p2pfs: they start together
        go=$WORK/conc-$run.go
        pids=()
        for i in $(seq 1 "$CONC_SENDERS"); do
            # shellcheck disable=SC2016
            bl_bg_start TERM "$WORK/conc-$run-$i.time" "$WORK/conc-$run-$i.out" \
                bash -c 'while [ ! -e "$0" ]; do sleep 0.01; done; exec "$@"' "$go" \
                "$P2PFS" --home "${homes[i]}" -q send "${srcs[i]}" "$RID@$addr" || bl_die "sender $i did not start"
            pids[i]=$BL_PID
        done
        t0=$EPOCHREALTIME
        touch "$go"
        ok=0 failed=0 usum=0 ssum=0 rmax=0
        for i in $(seq 1 "$CONC_SENDERS"); do
            rc=0
            bl_bg_wait "${pids[i]}" || rc=$?
            if [ "$rc" = 0 ]; then ok=$((ok + 1)); else
                failed=$((failed + 1))
                fail concurrent "$run" "sender $i of $CONC_SENDERS (exit $rc)" "$WORK/conc-$run-$i.out"
            fi
        done
        t1=$EPOCHREALTIME
        for i in $(seq 1 "$CONC_SENDERS"); do
            read -r wall user sys rss < <(tail -n 1 "$WORK/conc-$run-$i.time")
            usum=$(awk -v a="$usum" -v b="$user" 'BEGIN { print a + b }')
            ssum=$(awk -v a="$ssum" -v b="$sys" 'BEGIN { print a + b }')
            if [ "$rss" -gt "$rmax" ]; then rmax=$rss; fi
        done
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "concurrent:p2pfs:client" "$run" "$wall" "$usum" "$ssum" "$rmax" >>"$RES"
        bl_logline "concurrent:p2pfs:client (all)" "$wall" "$usum" "$ssum" "$rmax"
        bl_serve_stop "$spid" "$WORK/conc-$run.serve-out"
        bl_record_time_file "concurrent:p2pfs:server" "$run" "$WORK/conc-$run.serve-time"
        grep -i -E 'error|refus|busy|fail' "$WORK/conc-$run.serve-out" >"$WORK/serve-err" || true
        if [ -s "$WORK/serve-err" ]; then fail concurrent "$run" "p2pfs serve (receiver)" "$WORK/serve-err"; fi
        stored=$(vault_count "$RHOME")
        meta concurrent "$run" "$ok" "$failed" "$stored"
        bl_log "  $ok of $CONC_SENDERS senders completed, $failed failed; the receiving vault holds $stored of $((CONC_SENDERS * CONC_FILES)) files"
    done
}

# ---------------------------------------------------------------- 6 conn
run_conn() {
    local run i cpid caddr tiny d
    meta workload conn connections "$CONN_N"
    meta workload tiny files 1 bytes 1024
    new_pair conn
    bl_serve_start "$RHOME" "$WORK/conn.serve-time" "$WORK/conn.serve-out"
    cpid=$BL_SERVE_PID caddr=$BL_SERVE_ADDR
    tiny=$WORK/tiny.bin
    head -c 1024 /dev/urandom >"$tiny"
    # first contact (pins the key given) outside the timing
    "$P2PFS" --home "$SHOME" -q remote list "$RID@$caddr" >/dev/null
    for run in $(seq 1 "$RUNS"); do
        run_log conn "$run" "$CONN_N × each: p2pfs remote list, ssh true, 1 KiB p2pfs send, 1 KiB scp"
        BL_LOG_MEASURE=0
        bl_proc_begin "$cpid"
        for i in $(seq 1 "$CONN_N"); do
            bl_try_measure "conn:p2pfs:client" "$run" "$P2PFS" --home "$SHOME" -q remote list "$RID@$caddr" ||
                fail conn "$run" "p2pfs remote list (connection $i)" "$WORK/cmd.out"
        done
        bl_proc_record "conn:p2pfs:server" "$run" "$cpid"
        scale_last "$CONN_N"
        bl_proc_begin "$cpid"
        for i in $(seq 1 "$CONN_N"); do
            bl_try_measure "tiny:p2pfs:client" "$run" "$P2PFS" --home "$SHOME" -q send --again "$tiny" "$RID@$caddr" ||
                fail tiny "$run" "p2pfs send 1 KiB (transfer $i)" "$WORK/cmd.out"
        done
        bl_proc_record "tiny:p2pfs:server" "$run" "$cpid"
        scale_last "$CONN_N"
        if have scp; then
            bl_sshd_start "$WORK/sshd-time"
            for i in $(seq 1 "$CONN_N"); do
                bl_try_measure "conn:ssh:client" "$run" ssh "${SSH_OPTS[@]}" root@127.0.0.1 true ||
                    fail conn "$run" "ssh true (connection $i)" "$WORK/cmd.out"
            done
            bl_sshd_stop "conn:ssh:server" "$run" "$WORK/sshd-time"
            scale_last "$CONN_N"
            # the same without the remote login shell (`ssh true` runs it, with
            # whatever its rc files do): the in-process sftp subsystem, which
            # ends at once on EOF
            bl_sshd_start "$WORK/sshd-time"
            for i in $(seq 1 "$CONN_N"); do
                bl_try_measure "conn:sshsftp:client" "$run" ssh "${SSH_OPTS[@]}" -s root@127.0.0.1 sftp ||
                    fail conn "$run" "ssh -s sftp (connection $i)" "$WORK/cmd.out"
            done
            bl_sshd_stop "conn:sshsftp:server" "$run" "$WORK/sshd-time"
            scale_last "$CONN_N"
            d=$WORK/tiny-$run-scp
            mkdir "$d"
            bl_sshd_start "$WORK/sshd-time"
            for i in $(seq 1 "$CONN_N"); do
                if bl_try_measure "tiny:scp:client" "$run" scp "${SCP_OPTS[@]}" "$tiny" "root@127.0.0.1:$d/tiny-$i"; then
                    bl_timed_sync "tiny:scp+sync:client" "$run" sync -- "$d/tiny-$i" "$d"
                else
                    fail tiny "$run" "scp 1 KiB (transfer $i)" "$WORK/cmd.out"
                fi
            done
            bl_sshd_stop "tiny:scp:server" "$run" "$WORK/sshd-time"
            scale_last "$CONN_N"
        fi
        BL_LOG_MEASURE=1
        awk -F'\t' -v r="$run" "$BL_AWK_MEDIAN"'
            $2 == r && $1 ~ /^(conn|tiny):.*:client$/ { l[$1] = l[$1] " " $3 }
            END { for (k in l) printf "[bench]   %-34s median %.1f ms per command\n", k, 1000 * median(l[k]) }' "$RES" | sort >&2
    done
    bl_serve_stop "$cpid" "$WORK/conn.serve-out"
}

# ---------------------------------------------------------------- 4 medium
run_medium() {
    local run src=$WORK/medium-src
    bl_log "medium: creating $MED_N files of $MED_MIB MiB"
    make_files "$src" "$MED_N" $((MED_MIB * 1024))
    meta workload medium files "$MED_N" bytes $((MED_N * MED_MIB * 1048576))
    SENDME_TICKET=
    if have sendme; then sendme_start medium "$src" || true; fi
    for run in $(seq 1 "$RUNS"); do
        run_log medium "$run" "$MED_N × $MED_MIB MiB"
        p2p_send medium "$run" "medium-$run" "$MED_N" "$src" || true
        rm -rf -- "$WORK/medium-$run-recv" "$WORK/medium-$run-send"
        tree_baselines medium "$run" "$src" "$MED_N" 0 scp tar rsync sendme
    done
    stop_sendme
    rm -rf -- "$src"
}

# ---------------------------------------------------------------- 1 file (send, get)
run_file() {
    local run file=$WORK/file.bin name=file.bin ghome fhome gpid gaddr gid d
    bl_log "file: creating a $FILE_MIB MiB random file"
    head -c $((FILE_MIB * 1048576)) /dev/urandom >"$file"
    sync
    meta workload file-send files 1 bytes $((FILE_MIB * 1048576))
    meta workload file-get files 1 bytes $((FILE_MIB * 1048576))
    SENDME_TICKET=
    if have sendme; then sendme_start file-send "$file" || true; fi
    # get: a serving home with the file imported and shared with a fetcher
    # that may get; one serve without passphrase for every run
    ghome=$WORK/get-server fhome=$WORK/get-fetcher
    "$P2PFS" --home "$ghome" init --name bench-get-server >/dev/null
    "$P2PFS" --home "$fhome" init --name bench-get-fetcher >/dev/null
    "$P2PFS" --home "$ghome" -q vault import "$file" >/dev/null
    "$P2PFS" --home "$ghome" trust add "$(bl_node_id "$fhome")" --name bench-get-fetcher --allow get >/dev/null
    "$P2PFS" --home "$ghome" vault share "$name" bench-get-fetcher >/dev/null
    gid=$(bl_node_id "$ghome")
    bl_serve_start "$ghome" "$WORK/get.serve-time" "$WORK/get.serve-out" nopass
    gpid=$BL_SERVE_PID gaddr=$BL_SERVE_ADDR
    for run in $(seq 1 "$RUNS"); do
        run_log file "$run" "$FILE_MIB MiB"
        if p2p_send file-send "$run" "file-$run" 1 "$file" && [ "$run" = 1 ]; then
            "$P2PFS" --home "$WORK/file-1-recv" -q vault export "$name" "$WORK/export.bin" >/dev/null
            cmp -s "$file" "$WORK/export.bin" || bl_die "file: the file exported from the receiving vault differs from the input"
            rm -f -- "$WORK/export.bin"
        fi
        rm -rf -- "$WORK/file-$run-recv" "$WORK/file-$run-send"
        if have scp; then
            d=$WORK/file-$run-scp
            mkdir "$d"
            bl_warm "$file"
            if ssh_copy file-send scp "$run" "$d/$name" scp "${SCP_OPTS[@]}" "$file" "root@127.0.0.1:$d/$name"; then
                cmp -s "$file" "$d/$name" || bl_die "file: the scp copy differs from the input"
            fi
            rm -rf -- "$d"
        fi
        if [ -n "${SENDME_TICKET:-}" ]; then
            d=$WORK/file-$run-sendme
            if sendme_recv file-send "$run" "$d" "$d/$name"; then
                cmp -s "$file" "$d/$name" || bl_die "file: the sendme copy differs from the input"
            fi
            rm -rf -- "$d"
        fi
        # get from the long-lived serve
        d=$WORK/file-$run-get
        mkdir "$d"
        find "$ghome" -type f -exec cat -- {} + >/dev/null
        bl_proc_begin "$gpid"
        if bl_try_measure "file-get:p2pfs:client" "$run" "$P2PFS" --home "$fhome" -q get "$gid@$gaddr" "$name" "$d/$name"; then
            bl_proc_record "file-get:p2pfs:server" "$run" "$gpid"
            cmp -s "$file" "$d/$name" || bl_die "file: run $run: the file fetched by p2pfs get differs from the input"
        else
            fail file-get "$run" "p2pfs get" "$WORK/cmd.out"
        fi
        rm -rf -- "$d"
        if have scp; then
            d=$WORK/file-$run-scpdl
            mkdir "$d"
            bl_warm "$file"
            if ssh_copy file-get scp "$run" "$d/$name" scp "${SCP_OPTS[@]}" "root@127.0.0.1:$file" "$d/$name"; then
                cmp -s "$file" "$d/$name" || bl_die "file: run $run: the scp download differs from the input"
            fi
            rm -rf -- "$d"
        fi
    done
    bl_serve_stop "$gpid" "$WORK/get.serve-out"
    stop_sendme
    rm -rf -- "$file" "$ghome" "$fhome"
}

# ---------------------------------------------------------------- 2 big
run_big() {
    local run file=$WORK/big.bin avail need d
    avail=$(bl_avail_mib "$WORK")
    need=$((BIG_MIB * 2 + 2048)) # the input, one copy at a time, slack
    if [ "$avail" -lt "$need" ]; then
        skip "big ($BIG_MIB MiB)" "not enough free disk space in $WORK: ${avail} MiB free, ${need} MiB needed"
        return 0
    fi
    bl_log "big: creating a $BIG_MIB MiB random file (${avail} MiB free)"
    head -c $((BIG_MIB * 1048576)) /dev/urandom >"$file"
    sync
    meta workload big files 1 bytes $((BIG_MIB * 1048576))
    for run in $(seq 1 "$RUNS"); do
        run_log big "$run" "$BIG_MIB MiB"
        p2p_send big "$run" "big-$run" 1 "$file" || true
        rm -rf -- "$WORK/big-$run-recv" "$WORK/big-$run-send"
        if have scp; then
            d=$WORK/big-$run-scp
            mkdir "$d"
            bl_warm "$file"
            ssh_copy big scp "$run" "$d/big.bin" scp "${SCP_OPTS[@]}" "$file" "root@127.0.0.1:$d/big.bin" || true
            rm -rf -- "$d"
        fi
    done
    rm -f -- "$file"
}

# ---------------------------------------------------------------- run
T_START=$(date +%s)
for w in "${ORDER[@]}"; do
    if want "$w"; then
        bl_log "=== workload $w (CPU flags: $ISA)"
        "run_$w"
    fi
done
meta machine load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta machine duration_s $(($(date +%s) - T_START))

# ---------------------------------------------------------------- report
mkdir -p "$OUT"
python3 "$REPO/scripts/bench-report.py" --results "$RES" --meta "$META" --md "$OUT/BENCHMARKS.md" --png "$OUT/bench.png"
if [ -n "${BENCH_RAW:-}" ]; then
    cp "$RES" "$BENCH_RAW"
    cp "$META" "$BENCH_RAW.meta"
    bl_log "per-run figures written to $BENCH_RAW (and $BENCH_RAW.meta)"
fi
