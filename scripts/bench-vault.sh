#!/usr/bin/env bash
# bench-vault.sh — benchmark (not a test) of `p2pfs vault import/export`
# against rage (age encryption) on the same file, in the same run, under the
# same conditions.
#
# What it does
#   1. builds p2pfs in release (skip with BENCH_NO_BUILD=1);
#      installs rage from crates.io if missing (`cargo install rage --locked`,
#      into $CARGO_HOME/bin, default ~/.cargo/bin; reused when present);
#      installs GNU time (Debian package `time`) if /usr/bin/time is missing.
#   2. makes a fresh temporary directory (default under target/, i.e. on the
#      same file system as the vault homes, which live inside it) with a
#      random file of BENCH_SIZE_MIB MiB.
#   3. runs BENCH_RUNS repetitions; each run does, in this order:
#        p2pfs vault import FILE        into a fresh home (init is not timed)
#        p2pfs vault list               unlock alone (Argon2id + index), for context
#        p2pfs vault export NAME DEST   to a fresh destination
#        rage -e -r RECIPIENT -o OUT FILE
#        rage -d -i KEY -o OUT2 OUT
#      each under `/usr/bin/time -f` (wall, user, sys, peak RSS).
#   4. prints the median of each figure over the runs, the import/rage-encrypt
#      throughput ratio (target ≥ 1.5×) and whether the peak RSS of import and
#      export is under 64 MiB (target, whatever the file size).
#
# Page cache: WARM for every command. Before each timed command its input is
# read once (cat > /dev/null), and `sync` is run (untimed) so no write-back of
# an earlier command's output runs during the next measurement. The machine
# has plenty of RAM for the input and the outputs to stay cached.
#
# Durability differs by design: p2pfs fsyncs what it writes (import: the data
# file, envelope and directory; export: the output and directory), rage does
# not. The table therefore also shows "rage … + sync": the rage wall time plus
# the `sync` that follows it (flushing exactly rage's output), for a
# like-for-like durable comparison. The target ratio uses plain rage.
#
# Throughput is in MiB/s (2^20 bytes per second) of plaintext, computed from
# the median wall time. CPU is user + sys seconds. RSS is the peak resident
# set size reported by GNU time, in MiB.
#
# Settings (environment):
#   BENCH_SIZE_MIB   size of the test file in MiB            (default 1024)
#   BENCH_RUNS       repetitions                              (default 5)
#   BENCH_TMPDIR     parent of the temporary directory        (default <repo>/target)
#                    (BENCH_TMPDIR=/dev/shm puts file, vaults and outputs on
#                    tmpfs, where fsync is free: a compute-only comparison)
#   BENCH_NO_BUILD   1 = use the existing target/release/p2pfs
#   BENCH_STRICT     1 = exit 1 when a target is missed       (default: report only)
#   BENCH_RAW        FILE: also write the per-run figures there (TSV)
#   CARGO_HOME       where `cargo install` puts rage          (default ~/.cargo)
#
# Usage:  scripts/bench-vault.sh
#         BENCH_SIZE_MIB=256 BENCH_RUNS=3 scripts/bench-vault.sh

set -euo pipefail
BL_NAME=bench-vault.sh
# shellcheck source=bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
RUNS=${BENCH_RUNS:-5}
STRICT=${BENCH_STRICT:-0}
RSS_TARGET_MIB=64
RATIO_TARGET=1.5

case $SIZE_MIB in '' | *[!0-9]* | 0) echo "BENCH_SIZE_MIB must be a positive integer" >&2; exit 2 ;; esac
case $RUNS in '' | *[!0-9]* | 0) echo "BENCH_RUNS must be a positive integer" >&2; exit 2 ;; esac

log() { bl_log "$@"; }

# ---------------------------------------------------------------- tools
bl_need_time
bl_cargo_install rage || bl_die "could not install rage (cargo install rage --locked)"
bl_cargo_install rage rage-keygen || bl_die "rage-keygen is missing"
RAGE=$(command -v rage)
RAGE_KEYGEN=$(command -v rage-keygen)
bl_build_p2pfs

# ---------------------------------------------------------------- work dir
bl_make_work bench-vault
FILE=$WORK/input.bin
NAME=input.bin

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "creating ${SIZE_MIB} MiB random file"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$FILE"

"$RAGE_KEYGEN" -o "$WORK/key.txt" 2>/dev/null
RECIPIENT=$(sed -n 's/^# public key: //p' "$WORK/key.txt")
[ -n "$RECIPIENT" ] || { echo "could not read the rage recipient" >&2; exit 2; }

export P2PFS_PASSPHRASE=bench-vault-passphrase
unset P2PFS_PASSPHRASE_FILE

warm() { bl_warm "$@"; }
measure() { bl_measure "$@"; }
# sync_after OP RUN : times the `sync` that flushes the previous command's
# output and records OP = previous wall + sync wall.
sync_after() { bl_timed_sync "$1" "$2" sync; }

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS"
    home=$WORK/home-$run
    P2PFS_HOME=$home "$P2PFS" init --name bench >/dev/null

    warm "$FILE"
    measure "p2pfs import" "$run" env P2PFS_HOME="$home" "$P2PFS" -q vault import "$FILE"

    warm "$home"/vault/header "$home"/vault/index
    measure "p2pfs unlock only (vault list)" "$run" env P2PFS_HOME="$home" "$P2PFS" -q vault list

    warm "$home"/vault/objects/*
    measure "p2pfs export" "$run" env P2PFS_HOME="$home" "$P2PFS" -q vault export "$NAME" "$WORK/export-$run.bin"
    if [ "$run" = 1 ]; then
        cmp -s "$FILE" "$WORK/export-$run.bin" || { echo "p2pfs export differs from the input" >&2; exit 1; }
    fi
    rm -rf -- "$home" "$WORK/export-$run.bin"

    warm "$FILE"
    measure "rage encrypt" "$run" "$RAGE" -e -r "$RECIPIENT" -o "$WORK/enc-$run.age" "$FILE"
    sync_after "rage encrypt + sync" "$run"

    warm "$WORK/enc-$run.age"
    measure "rage decrypt" "$run" "$RAGE" -d -i "$WORK/key.txt" -o "$WORK/dec-$run.bin" "$WORK/enc-$run.age"
    sync_after "rage decrypt + sync" "$run"
    if [ "$run" = 1 ]; then
        cmp -s "$FILE" "$WORK/dec-$run.bin" || { echo "rage decrypt differs from the input" >&2; exit 1; }
    fi
    rm -f -- "$WORK/enc-$run.age" "$WORK/dec-$run.bin"
done

# ---------------------------------------------------------------- report
if [ -n "${BENCH_RAW:-}" ]; then
    { printf 'op\trun\twall_s\tuser_s\tsys_s\tmaxrss_kib\n'; cat "$RES"; } >"$BENCH_RAW"
    log "per-run figures written to $BENCH_RAW"
fi
echo
echo "p2pfs vault benchmark — $(date -u +%Y-%m-%dT%H:%MZ)"
echo "  file:     ${SIZE_MIB} MiB random, $RUNS runs, page cache warm, medians shown"
echo "  machine:  $(nproc) cores, $(bl_cpu_model), $(bl_fs_of "$WORK") file system"
isa="$(bl_isa) "
echo "  load avg: $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end (other work on the machine skews the figures)"
echo "  CPU ISA:  ${isa:-?}(AES-GCM and BLAKE3 speed depend on vaes/avx512f)"
echo "  p2pfs:    $(bl_rev); $("$RAGE" --version 2>/dev/null | head -n1)"
echo

awk -F'\t' -v size="$SIZE_MIB" -v rss_target="$RSS_TARGET_MIB" -v ratio_target="$RATIO_TARGET" \
    -v strict="$STRICT" "$BL_AWK_MEDIAN"'
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
    printf "%-32s %7s %7s %7s %7s %7s %8s %8s\n", "operation", "wall s", "MiB/s", "CPU s", "user s", "sys s", "RSS MiB", "RSS max"
    printf "%-32s %7s %7s %7s %7s %7s %8s %8s\n", "---------", "------", "-----", "-----", "------", "-----", "-------", "-------"
    for (k = 1; k <= nops; k++) {
        op = order[k]
        w = median(wall[op]); c = median(cpu[op]); r = median(rss[op])
        thr = (op ~ /unlock/) ? "-" : sprintf("%.0f", size / w)
        mw[op] = w; mr[op] = maxrss[op]
        printf "%-32s %7.2f %7s %7.2f %7.2f %7.2f %8.1f %8.1f\n", op, w, thr, c, median(usr[op]), median(sy[op]), r, maxrss[op]
    }
    print ""
    print "(medians over runs; MiB/s = file size / median wall; CPU = user + sys; RSS = peak resident set)"
    print ""
    ratio = mw["rage encrypt"] / mw["p2pfs import"]
    ok_ratio = ratio >= ratio_target
    printf "import / rage encrypt throughput:         %.2fx  (target >= %.1fx: %s)\n", ratio, ratio_target, ok_ratio ? "MET" : "MISSED"
    printf "import / (rage encrypt + sync):           %.2fx  (both durable, for context)\n", mw["rage encrypt + sync"] / mw["p2pfs import"]
    printf "export / rage decrypt throughput:         %.2fx\n", mw["rage decrypt"] / mw["p2pfs export"]
    ok_ri = mr["p2pfs import"] < rss_target
    ok_re = mr["p2pfs export"] < rss_target
    printf "peak RSS import (max over runs):          %.1f MiB  (target < %d MiB: %s)\n", mr["p2pfs import"], rss_target, ok_ri ? "MET" : "MISSED"
    printf "peak RSS export (max over runs):          %.1f MiB  (target < %d MiB: %s)\n", mr["p2pfs export"], rss_target, ok_re ? "MET" : "MISSED"
    if (strict == 1 && !(ok_ratio && ok_ri && ok_re)) exit 1
}' "$RES"
