# shellcheck shell=bash
# Variables set here are used by the scripts that source this file:
# shellcheck disable=SC2034
# bench-lib.sh — shell code shared by the benchmark scripts (scripts/bench.sh,
# scripts/bench-net.sh, scripts/bench-vault.sh). Sourced, never run:
#
#   BL_NAME=bench-net.sh                      # name used in messages
#   . "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
#
# What it provides
#   messages      bl_log, bl_die
#   tools         bl_as_root, bl_apt_install (no service is started: a
#                 policy-rc.d is put in place while installing, removed after),
#                 bl_need_time (GNU time), bl_need_ssh (openssh client +
#                 server, procps), bl_cargo_install (crates.io, into
#                 $CARGO_HOME/bin), bl_build_p2pfs (release build, honours
#                 BENCH_P2PFS and BENCH_NO_BUILD; sets P2PFS)
#   work dir      bl_make_work PREFIX: a fresh temporary directory WORK under
#                 BENCH_TMPDIR (default <repo>/target) and an empty results
#                 file RES; removed on exit
#   processes     bl_bg_start / bl_bg_wait / bl_bg_stop: background commands
#                 under GNU time, registered so that the EXIT/INT/TERM trap
#                 stops every one of them by its pid (never by name);
#                 bl_serve_start / bl_serve_stop / bl_serve_addr (a `p2pfs serve` on
#                 127.0.0.1:0 without mDNS); bl_stop_pid, bl_child_of
#   private sshd  bl_sshd_setup (host and client keys, a config of its own on
#                 127.0.0.1 and a free port, pid file in WORK; sets SSH_PORT,
#                 SCP_OPTS, SSH_OPTS, SSH_CMD, SCP_MODE), bl_sshd_start,
#                 bl_sshd_stop (records the listener's GNU time figures, which
#                 include every per-connection process). Another sshd is never
#                 touched: a pid is signalled only while its command line names
#                 our config file.
#   measuring     RES lines are: op <TAB> run <TAB> wall_s <TAB> user_s <TAB>
#                 sys_s <TAB> maxrss_kib. bl_measure / bl_try_measure (a
#                 command under GNU time, after an untimed `sync`; wall from
#                 bash's EPOCHREALTIME around it, CPU and RSS from GNU time),
#                 bl_record_time_file, bl_timed_sync (a derived line: the
#                 previous line's wall plus the wall of a sync command),
#                 bl_proc_begin / bl_proc_record (CPU delta of a long-lived
#                 process from /proc/PID/stat utime+stime, read until it stops
#                 moving, and its VmHWM reset through clear_refs), bl_warm
#   report        BL_AWK_MEDIAN (an awk function median(list) of a
#                 space-separated list), bl_median, bl_isa (the CPU flags that
#                 matter), bl_cpu_model, bl_fs_of, bl_rev, bl_node_id
#
# The caller runs with `set -euo pipefail` and LC_ALL=C (set here too).

export LC_ALL=C
BL_NAME=${BL_NAME:-bench}
BL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export PATH="$CARGO_HOME/bin:$PATH"
TIME=/usr/bin/time
SSHD=/usr/sbin/sshd
BL_CLK_TCK=$(getconf CLK_TCK)
BL_TIME_FMT='%e %U %S %M'

WORK=${WORK:-}
RES=${RES:-}
BL_MADE_POLICY_RC=0
BL_MADE_RUN_SSHD=0
declare -A BL_BG=() # pid -> "time-pid signal kind"
BL_PID=
BL_TPID=
BL_SSHD_PID=

bl_log() { printf '[bench] %s\n' "$*" >&2; }
bl_die() { printf '%s: %s\n' "$BL_NAME" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
bl_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    bl_bg_stop_all
    if declare -F bl_on_cleanup >/dev/null; then bl_on_cleanup || true; fi
    if [ "$BL_MADE_POLICY_RC" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$BL_MADE_RUN_SSHD" = 1 ]; then rmdir /run/sshd 2>/dev/null || true; fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then rm -rf -- "$WORK"; fi
    exit "$rc"
}
trap bl_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
bl_as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# bl_apt_install PKG...: returns non-zero when the packages cannot be installed.
bl_apt_install() {
    local rc=0
    bl_log "installing $* (apt-get)"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # keep a package (openssh-server) from starting a system service
        printf '#!/bin/sh\nexit 101\n' | bl_as_root tee /usr/sbin/policy-rc.d >/dev/null
        bl_as_root chmod 755 /usr/sbin/policy-rc.d
        BL_MADE_POLICY_RC=1
    fi
    if ! bl_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; then
        { bl_as_root apt-get update -q >/dev/null &&
            bl_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } || rc=1
    fi
    if [ "$BL_MADE_POLICY_RC" = 1 ]; then bl_as_root rm -f /usr/sbin/policy-rc.d; BL_MADE_POLICY_RC=0; fi
    return "$rc"
}

bl_need_time() {
    [ -x "$TIME" ] || bl_apt_install time || true
    [ -x "$TIME" ] || bl_die "could not install GNU time (Debian package 'time')"
    command -v pgrep >/dev/null || bl_apt_install procps || bl_die "could not install procps"
}

# bl_need_ssh hard|soft: openssh server and client; soft = return 1 instead of exiting.
bl_need_ssh() {
    local need=()
    [ -x "$SSHD" ] || need+=(openssh-server)
    { command -v ssh && command -v scp && command -v ssh-keygen; } >/dev/null 2>&1 || need+=(openssh-client)
    if [ ${#need[@]} -gt 0 ]; then bl_apt_install "${need[@]}" || true; fi
    { [ -x "$SSHD" ] && command -v scp >/dev/null && command -v ssh-keygen >/dev/null; } && return 0
    [ "${1:-}" = soft ] && return 1
    bl_die "could not install openssh-server / openssh-client"
}

# bl_cargo_install CRATE [BIN]: install CRATE from crates.io when BIN (default
# CRATE) is not on PATH; returns non-zero when that fails.
bl_cargo_install() {
    local crate=$1 bin=${2:-$1}
    command -v "$bin" >/dev/null && return 0
    bl_log "installing $crate from crates.io into $CARGO_HOME/bin (cargo install $crate --locked)"
    cargo install "$crate" --locked --root "$CARGO_HOME" >&2 || return 1
    command -v "$bin" >/dev/null
}

# bl_build_p2pfs: sets P2PFS (BENCH_P2PFS = that binary, no build; BENCH_NO_BUILD=1
# = the existing target/release/p2pfs).
bl_build_p2pfs() {
    if [ -n "${BENCH_P2PFS:-}" ]; then
        P2PFS=$(realpath -- "$BENCH_P2PFS")
    else
        if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
            bl_log "building p2pfs (release)"
            (cd "$BL_REPO" && cargo build --release --quiet --bin p2pfs)
        fi
        P2PFS=$BL_REPO/target/release/p2pfs
    fi
    [ -x "$P2PFS" ] || bl_die "no $P2PFS (build failed, or BENCH_NO_BUILD=1 without a build)"
}

# bl_make_work PREFIX: WORK = a fresh directory under BENCH_TMPDIR, RES = WORK/results.tsv.
bl_make_work() {
    local parent=${BENCH_TMPDIR:-$BL_REPO/target}
    mkdir -p "$parent"
    WORK=$(mktemp -d "$parent/$1.XXXXXX")
    case $WORK in *[[:space:]]*) bl_die "the work directory must not contain white space: $WORK" ;; esac
    RES=$WORK/results.tsv
    : >"$RES"
    bl_log "work dir $WORK ($(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}'))"
}

# bl_avail_mib DIR: free space of DIR's file system in MiB.
bl_avail_mib() { df -Pm "$1" | awk 'NR==2 {print $4}'; }

# ---------------------------------------------------------------- processes
# bl_stop_pid PID SIGNAL: signal PID, wait up to 10 s, then SIGKILL.
bl_stop_pid() {
    local pid=$1 sig=$2 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# bl_child_of PID: the pid of PID's (only) child, waiting up to 10 s for it.
bl_child_of() {
    local c i
    for i in $(seq 1 100); do
        c=$(pgrep -P "$1" | head -n1 || true)
        if [ -n "$c" ]; then echo "$c"; return 0; fi
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# bl_is_our_sshd PID: the process is an sshd started with our config file.
bl_is_our_sshd() {
    [ -n "${1:-}" ] && [ -n "$WORK" ] && [ -r "/proc/$1/cmdline" ] &&
        tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$WORK/ssh/sshd_config"
}

# bl_bg_start SIGNAL TIMEFILE OUTFILE CMD...: start CMD in the background under
# GNU time (figures to TIMEFILE, output to OUTFILE); sets BL_TPID (GNU time)
# and BL_PID (CMD), registered for bl_bg_stop and the exit trap (SIGNAL stops
# it; GNU time itself ignores SIGINT, so the command is signalled, not time).
bl_bg_start() {
    local sig=$1 tf=$2 out=$3
    shift 3
    "$TIME" -f "$BL_TIME_FMT" -o "$tf" "$@" </dev/null >"$out" 2>&1 &
    BL_TPID=$!
    BL_PID=$(bl_child_of "$BL_TPID") || { wait "$BL_TPID" 2>/dev/null || true; BL_PID=; return 1; }
    BL_BG[$BL_PID]="$BL_TPID $sig ${BL_BG_KIND:-cmd}"
}

# bl_bg_wait PID: wait for a registered command to end by itself; returns its status.
bl_bg_wait() {
    local tpid sig kind rc=0
    read -r tpid sig kind <<<"${BL_BG[$1]}"
    wait "$tpid" || rc=$?
    unset "BL_BG[$1]"
    return "$rc"
}

# bl_bg_stop PID: stop a registered command with its signal and reap its GNU time.
bl_bg_stop() {
    local tpid sig kind
    [ -n "${1:-}" ] && [ -n "${BL_BG[$1]+x}" ] || return 0
    read -r tpid sig kind <<<"${BL_BG[$1]}"
    if [ "$kind" != sshd ] || bl_is_our_sshd "$1"; then bl_stop_pid "$1" "$sig"; fi
    wait "$tpid" 2>/dev/null || true
    unset "BL_BG[$1]"
}

bl_bg_stop_all() {
    local pid
    for pid in "${!BL_BG[@]}"; do bl_bg_stop "$pid"; done
}

# bl_serve_start HOME TIMEFILE OUTFILE [nopass]: `p2pfs serve` on 127.0.0.1:0,
# no mDNS; sets BL_SERVE_PID and BL_SERVE_ADDR (host:port). nopass = started
# without any passphrase in its environment.
bl_serve_start() {
    local home=$1 tf=$2 out=$3 pre=()
    if [ "${4:-}" = nopass ]; then pre=(env -u P2PFS_PASSPHRASE -u P2PFS_PASSPHRASE_FILE); fi
    BL_SERVE_ADDR=
    BL_BG_KIND=serve bl_bg_start INT "$tf" "$out" "${pre[@]}" "$P2PFS" --home "$home" -q serve --listen 127.0.0.1:0 --no-mdns ||
        bl_die "p2pfs serve did not start: $(cat "$out")"
    BL_SERVE_PID=$BL_PID
    BL_SERVE_ADDR=$(bl_serve_addr "$BL_SERVE_PID" "$out") ||
        bl_die "p2pfs serve did not print its address: $(cat "$out")"
}

# bl_serve_addr PID OUTFILE: the host:port a serve (PID, output in OUTFILE)
# says it listens on, waiting up to 30 s; fails when PID ends first.
bl_serve_addr() {
    local i a
    for i in $(seq 1 300); do
        a=$(sed -n 's/^ *listening: *\([0-9.]*:[0-9]*\) (UDP).*/\1/p' "$2" | head -n1)
        if [ -n "$a" ]; then echo "$a"; return 0; fi
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# bl_serve_stop PID OUTFILE: SIGINT (serve's clean stop), reaped; complains when
# serve did not report a clean stop.
bl_serve_stop() {
    bl_bg_stop "$1"
    grep -q '^stopped' "$2" || bl_log "  (serve did not report a clean stop: $(tail -n 2 "$2"))"
}

# bl_node_id HOME: the node id of the node in HOME.
bl_node_id() { "$P2PFS" --home "$1" id --json | sed 's/.*"id":"\([a-z0-9]*\)".*/\1/'; }

# ---------------------------------------------------------------- private sshd
bl_port_free() {
    if command -v ss >/dev/null; then
        [ -z "$(ss -Htuln "sport = :$1" 2>/dev/null)" ]
    else
        ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# bl_free_port: a port no one listens on (TCP or UDP), from 20000-59999.
bl_free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if bl_port_free "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

# bl_sshd_setup: keys and config of a private sshd in WORK/ssh (127.0.0.1, a
# free port, root login by key only, UsePAM no, StrictModes no, pid file in
# WORK). Sets SSHDIR, SSH_PORT, SCP_OPTS (scp), SSH_OPTS (ssh), SSH_CMD (the
# ssh command line as one string, for rsync -e), SCP_MODE. BENCH_SCP_LEGACY=1
# adds scp -O (the old scp protocol instead of SFTP).
bl_sshd_setup() {
    local common
    SSHDIR=$WORK/ssh
    mkdir -m 700 "$SSHDIR"
    ssh-keygen -q -t ed25519 -N '' -C "$BL_NAME-host" -f "$SSHDIR/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C "$BL_NAME-client" -f "$SSHDIR/client_ed25519"
    cp "$SSHDIR/client_ed25519.pub" "$SSHDIR/authorized_keys"
    SSH_PORT=$(bl_free_port) || bl_die "no free TCP port found for sshd"
    cat >"$SSHDIR/sshd_config" <<EOF
# private sshd of scripts/$BL_NAME
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $SSHDIR/host_ed25519
PidFile $SSHDIR/sshd.pid
AuthorizedKeysFile $SSHDIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
X11Forwarding no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
EOF
    if [ ! -d /run/sshd ]; then
        bl_as_root mkdir -m 755 /run/sshd # privilege separation directory sshd insists on
        BL_MADE_RUN_SSHD=1
    fi
    "$SSHD" -t -f "$SSHDIR/sshd_config" || bl_die "sshd rejects the generated config"
    common=(-F /dev/null -i "$SSHDIR/client_ed25519"
        -c aes256-gcm@openssh.com -o Compression=no
        -o IdentitiesOnly=yes -o BatchMode=yes
        -o StrictHostKeyChecking=no -o UserKnownHostsFile="$SSHDIR/known_hosts")
    SCP_OPTS=(-q -P "$SSH_PORT" "${common[@]}")
    SSH_OPTS=(-p "$SSH_PORT" "${common[@]}")
    SSH_CMD="ssh ${SSH_OPTS[*]}"
    if [ "${BENCH_SCP_LEGACY:-0}" = 1 ]; then
        SCP_OPTS=(-O "${SCP_OPTS[@]}")
        SCP_MODE="legacy scp protocol (-O)"
    else
        SCP_MODE="SFTP protocol (scp default)"
    fi
}

# bl_sshd_start TIMEFILE: a fresh `sshd -D` with our config under GNU time;
# sets BL_SSHD_PID once its pid file names it.
bl_sshd_start() {
    local i
    rm -f "$SSHDIR/sshd.pid"
    BL_BG_KIND=sshd bl_bg_start TERM "$1" /dev/null "$SSHD" -D -f "$SSHDIR/sshd_config" -E "$SSHDIR/sshd.log" ||
        bl_die "sshd did not start: $(tail -n 5 "$SSHDIR/sshd.log" 2>/dev/null)"
    BL_SSHD_PID=$BL_PID
    for i in $(seq 1 100); do
        [ -s "$SSHDIR/sshd.pid" ] && [ "$(cat "$SSHDIR/sshd.pid")" = "$BL_SSHD_PID" ] && return 0
        kill -0 "$BL_SSHD_PID" 2>/dev/null || break
        sleep 0.1
    done
    bl_die "sshd did not come up: $(tail -n 5 "$SSHDIR/sshd.log" 2>/dev/null)"
}

# bl_sshd_stop OP RUN TIMEFILE: wait until the listener has no children left
# (their rusage is then in its figures), stop it, record its GNU time line.
bl_sshd_stop() {
    local i
    for i in $(seq 1 100); do
        [ -z "$(pgrep -P "$BL_SSHD_PID" || true)" ] && break
        sleep 0.1
    done
    bl_is_our_sshd "$BL_SSHD_PID" || bl_die "pid $BL_SSHD_PID is not our sshd any more"
    bl_bg_stop "$BL_SSHD_PID"
    BL_SSHD_PID=''
    bl_record_time_file "$1" "$2" "$3"
}

# ---------------------------------------------------------------- measuring
# bl_logline OP WALL USER SYS RSS_KIB [NOTE]: one measurement on stderr
# (BL_LOG_MEASURE=0 silences it, for batches of many short commands).
bl_logline() {
    [ "${BL_LOG_MEASURE:-1}" = 1 ] || return 0
    bl_log "  $(printf '%-34s' "$1") ${2:+$2 s wall, }${3} user, ${4} sys, $(($5 / 1024)) MiB peak${6:+ $6}"
}

# bl_record_time_file OP RUN FILE: append the figures GNU time wrote to FILE
# (last line; a line "Command exited with…/terminated by…" may precede it).
bl_record_time_file() {
    local wall user sys rss
    read -r wall user sys rss < <(tail -n 1 "$3")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$wall" "$user" "$sys" "$rss" >>"$RES"
    bl_logline "$1" "" "$user" "$sys" "$rss"
}

# bl_try_measure OP RUN CMD...: run CMD under GNU time after an untimed sync;
# on success append one result line, on failure return CMD's status (its
# output stays in WORK/cmd.out).
bl_try_measure() {
    local op=$1 run=$2 wall user sys rss rc=0 t0 t1
    shift 2
    sync
    t0=$EPOCHREALTIME
    "$TIME" -f "$BL_TIME_FMT" -o "$WORK/time.out" "$@" >"$WORK/cmd.out" 2>&1 </dev/null || rc=$?
    t1=$EPOCHREALTIME
    [ "$rc" = 0 ] || return "$rc"
    read -r wall user sys rss < <(tail -n 1 "$WORK/time.out")
    # GNU time's %e has 10 ms steps: the wall time is bash's clock around it
    # (it adds the start of GNU time itself, well under a millisecond)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$op" "$run" "$wall" "$user" "$sys" "$rss" >>"$RES"
    bl_logline "$op" "$wall" "$user" "$sys" "$rss"
}

# bl_measure OP RUN CMD...: bl_try_measure, exit on failure.
bl_measure() {
    bl_try_measure "$@" && return 0
    echo "command failed ($1, run $2): ${*:3}" >&2
    cat "$WORK/cmd.out" >&2
    exit 1
}

# bl_timed_sync OP RUN SYNC-CMD...: the previous result line under the name OP,
# with the wall time of SYNC-CMD (e.g. `sync -- FILE DIR`, `sync -f DIR`) added.
bl_timed_sync() {
    local op=$1 run=$2 prev t0 t1
    shift 2
    prev=$(tail -n 1 "$RES")
    t0=$EPOCHREALTIME
    "$@"
    t1=$EPOCHREALTIME
    awk -F'\t' -v op="$op" -v run="$run" -v t0="$t0" -v t1="$t1" \
        '{ printf "%s\t%s\t%.3f\t%s\t%s\t%s\n", op, run, $3 + (t1 - t0), $4, $5, $6 }' <<<"$prev" >>"$RES"
    if [ "${BL_LOG_MEASURE:-1}" = 1 ]; then bl_log "  $(printf '%-34s' "$op") $(tail -n 1 "$RES" | cut -f3) s wall"; fi
}

bl_warm() { cat -- "$@" >/dev/null; }

# bl_proc_ticks PID: "total utime stime" of PID (all its threads), in clock ticks.
bl_proc_ticks() {
    local s
    s=$(cat "/proc/$1/stat") || bl_die "pid $1 is gone"
    s=${s##*) } # the fields after the command name (which may hold spaces)
    # shellcheck disable=SC2086
    set -- $s
    echo "$((${12} + ${13})) ${12} ${13}"
}

# bl_settled_ticks PID: bl_proc_ticks once they stop moving (teardown after the
# client exited), at most ~5 s.
bl_settled_ticks() {
    local a b
    a=$(bl_proc_ticks "$1")
    b=$a
    for _ in $(seq 1 25); do
        sleep 0.2
        b=$(bl_proc_ticks "$1")
        [ "$b" = "$a" ] && break
        a=$b
    done
    echo "$b"
}

bl_hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# bl_proc_begin PID: reset PID's VmHWM to its current RSS, note its CPU ticks.
bl_proc_begin() {
    echo 5 >"/proc/$1/clear_refs"
    read -r _ BL_U0 BL_S0 < <(bl_proc_ticks "$1")
}

# bl_proc_record OP RUN PID [WALL]: append PID's CPU since bl_proc_begin (once it
# settled) and its VmHWM since then. WALL defaults to the previous line's wall.
bl_proc_record() {
    local op=$1 run=$2 pid=$3 wall=${4:-} u1 s1 user sys rss
    [ -n "$wall" ] || wall=$(tail -n 1 "$RES" | cut -f3)
    read -r _ u1 s1 < <(bl_settled_ticks "$pid")
    user=$(awk -v a="$BL_U0" -v b="$u1" -v t="$BL_CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    sys=$(awk -v a="$BL_S0" -v b="$s1" -v t="$BL_CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    rss=$(bl_hwm_kib "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$op" "$run" "$wall" "$user" "$sys" "$rss" >>"$RES"
    bl_logline "$op" "" "$user" "$sys" "$rss" "(/proc delta)"
}

# ---------------------------------------------------------------- report helpers
# awk: median(list) of a space-separated list of numbers.
# shellcheck disable=SC2016
BL_AWK_MEDIAN='
function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}'

# bl_median NUMBER...: their median.
bl_median() { awk -v l="$*" "$BL_AWK_MEDIAN"' BEGIN { print median(" " l) }'; }

# bl_isa: the CPU flags that matter for AES-GCM, GHASH, SHA-256 and BLAKE3.
bl_isa() {
    grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
        grep -x -E 'aes|pclmulqdq|vaes|vpclmulqdq|avx2|avx512f|sha_ni' | sort | tr '\n' ' ' | sed 's/ $//'
}

bl_cpu_model() { sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1; }

# bl_fs_of DIR: file system type of DIR.
bl_fs_of() { df -T "$1" | awk 'NR==2 {print $2}'; }

# bl_rev: short git commit of the repository, "(+ uncommitted changes)" when
# src/ or Cargo files differ from it.
bl_rev() {
    local rev dirty
    rev=$(git -C "$BL_REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
    dirty=$(git -C "$BL_REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -c1)
    echo "$rev${dirty:+ (+ uncommitted changes)}"
}
