#!/usr/bin/env python3
"""bench-report.py — the report of scripts/bench.sh.

Reads the per-run figures (RESULTS: op, run, wall s, user s, sys s, peak RSS
KiB; op = WORKLOAD:TOOL:SIDE, SIDE client or server) and the facts of the run
(META: machine, workload sizes, skips, failures, concurrent-sender outcomes),
computes medians, p2pfs/baseline ratios and the target verdicts, prints them
(with the CPU flags) on stdout, and writes the markdown report and the PNG
chart. matplotlib is installed when missing (pip, else apt python3-matplotlib);
without it the chart is skipped and the report says so.

Usage: bench-report.py --results R.tsv --meta M.tsv --md docs/BENCHMARKS.md --png docs/bench.png
"""

import argparse
import collections
import os
import statistics
import subprocess
import sys

MIB = 1 << 20
GIB = 1 << 30

# workload key -> (title template, kind). kind: bytes (MiB/s), files (files/s),
# latency (ms per command)
WORKLOADS = [
    ("file-send", "one {size} file: send", "bytes"),
    ("file-get", "one {size} file: get", "bytes"),
    ("big", "one {size} file: send (flat memory)", "bytes"),
    ("small", "{files} × {each} files in a folder: send", "files"),
    ("medium", "{files} × {each} files: send", "bytes"),
    ("vault", "{files} × {each} files: vault import", "files"),
    ("conn", "connection set-up (QUIC + Noise vs SSH), per connection", "latency"),
    ("tiny", "one 1 KiB file end to end", "latency"),
    ("concurrent", "{senders} concurrent senders × {per} files of 4 KiB into one serve", "files"),
]

TOOL_ORDER = ["p2pfs", "scp", "scp+sync", "tar", "tar+sync", "rsync", "rsync+sync",
              "sendme", "sendme+sync", "cp", "cp+sync", "ssh", "sshsftp"]

P2PFS_LABEL = {
    "file-send": "p2pfs send → serve",
    "file-get": "p2pfs get ← serve",
    "big": "p2pfs send → serve",
    "small": "p2pfs send DIR → serve",
    "medium": "p2pfs send DIR → serve",
    "vault": "p2pfs vault import",
    "conn": "p2pfs remote list",
    "tiny": "p2pfs send → serve",
    "concurrent": "p2pfs send (all senders)",
}


def tool_label(wl, tool):
    if tool == "p2pfs":
        return P2PFS_LABEL[wl]
    base, plus = (tool[:-5], " + sync") if tool.endswith("+sync") else (tool, "")
    names = {
        "scp": "scp download" if wl == "file-get" else ("scp -r" if wl in ("small", "medium") else "scp"),
        "tar": "tar c | ssh tar x",
        "rsync": "rsync -a over ssh",
        "sendme": "sendme receive",
        "cp": "cp -r",
        "ssh": "ssh true",
        "sshsftp": "ssh -s sftp (no remote shell)",
    }
    return names.get(base, base) + plus


def fmt_size(n):
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def num(x, digits=2):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


# ---------------------------------------------------------------- input
def read_results(path):
    rows = collections.defaultdict(list)  # (wl, tool, side) -> [(run, wall, cpu, rss_mib)]
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) != 6 or p[0].count(":") != 2:
                continue
            wl, tool, side = p[0].split(":")
            try:
                rows[(wl, tool, side)].append((int(p[1]), float(p[2]), float(p[3]) + float(p[4]), float(p[5]) / 1024))
            except ValueError:
                continue
    return rows


def read_meta(path):
    machine, workloads, skips, fails, notes, conc = {}, {}, [], [], collections.defaultdict(list), []
    loads = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "machine" and len(p) >= 2:
                machine[p[1]] = p[2] if len(p) > 2 else ""
            elif p[0] == "workload":
                kv = workloads.setdefault(p[1], {})
                for k, v in zip(p[2::2], p[3::2]):
                    kv[k] = int(v)
            elif p[0] == "skip":
                skips.append((p[1], p[2] if len(p) > 2 else ""))
            elif p[0] == "fail":
                fails.append((p[1], p[2], p[3], p[4] if len(p) > 4 else ""))
            elif p[0] == "note":
                notes[p[1]].append(p[2])
            elif p[0] == "concurrent":
                conc.append(tuple(int(x) for x in p[1:5]))
            elif p[0] == "load":
                loads[p[1]].append(p[3])
    # the runs of "file" measure file-send and file-get, those of "conn" conn and tiny
    for wl, also in (("file", ("file-send", "file-get")), ("conn", ("conn", "tiny"))):
        for o in also:
            loads.setdefault(o, loads.get(wl, []))
    for wl, lst in loads.items():
        notes[wl].append("load average (1 min) at the start of each run: " + ", ".join(lst))
    return machine, workloads, skips, fails, notes, conc


# ---------------------------------------------------------------- figures
class Figure:
    """Medians of one tool in one workload."""

    def __init__(self, wl, tool, kind, size, rows):
        self.wl, self.tool, self.kind = wl, tool, kind
        client = rows.get((wl, tool, "client"), [])
        base = tool[:-5] if tool.endswith("+sync") else tool
        server = rows.get((wl, base, "server"), [])
        self.runs = len({r[0] for r in client})
        self.n = len(client)
        self.wall = statistics.median(r[1] for r in client)
        # GNU time's CPU has 10 ms steps: for many short commands the mean is the figure
        agg = statistics.mean if kind == "latency" else statistics.median
        self.cpu_c = agg(r[2] for r in client)
        self.cpu_s = statistics.median(r[2] for r in server) if server else None
        self.rss_c = max(r[3] for r in client)
        self.rss_s = max(r[3] for r in server) if server else None
        self.cpu = self.cpu_c + (self.cpu_s or 0)
        self.bytes = size.get("bytes")
        self.files = size.get("files")
        if kind == "latency":
            self.rate = 1 / self.wall if self.wall > 0 else None
        elif kind == "files":
            self.rate = self.files / self.wall if self.wall > 0 else None
        else:
            self.rate = self.bytes / MIB / self.wall if self.wall > 0 else None
        self.cpu_per_gib = self.cpu / (self.bytes / GIB) if self.bytes and kind == "bytes" else None
        self.label = tool_label(wl, tool)

    def figure_str(self):
        if self.kind == "latency":
            return f"{self.wall * 1000:.1f} ms"
        if self.kind == "files":
            return f"{self.rate:,.0f} files/s"
        return f"{self.rate:,.0f} MiB/s"


def compute(rows, workloads, conc):
    figs = {}
    for wl, _, kind in WORKLOADS:
        size = workloads.get(wl, {})
        tools = {k[1] for k in rows if k[0] == wl and k[2] == "client"}
        figs[wl] = [Figure(wl, t, kind, size, rows) for t in TOOL_ORDER if t in tools]
    # concurrent senders: files/s counts what the receiving vault holds
    p = get(figs, "concurrent", "p2pfs")
    if p is not None and conc:
        stored = {c[0]: c[3] for c in conc}
        rates = [stored[r[0]] / r[1] for r in rows[("concurrent", "p2pfs", "client")] if r[0] in stored and r[1] > 0]
        if rates:
            p.rate = statistics.median(rates)
    return figs


def get(figs, wl, tool):
    for f in figs.get(wl, []):
        if f.tool == tool:
            return f
    return None


def ratio(p, b):
    """p2pfs / baseline: throughput ratio (higher is better for p2pfs), or for
    latency workloads the time ratio (lower is better)."""
    if p is None or b is None:
        return None
    if p.kind == "latency":
        return p.wall / b.wall
    return p.rate / b.rate


# ---------------------------------------------------------------- targets
def targets(figs, workloads, conc, fails):
    out = []  # (target, measured, verdict)

    def thr(name, wl, tool, factor):
        p, b = get(figs, wl, "p2pfs"), get(figs, wl, tool)
        want = f"≥ {factor:.2f}× {tool_label(wl, tool)}" if factor != 1 else f"≥ {tool_label(wl, tool)}"
        if p is None or b is None:
            out.append((name, want, "not measured", "NOT MEASURED"))
            return
        r = ratio(p, b)
        out.append((name, want, f"{r:.2f}× ({p.figure_str()} vs {b.figure_str()})", "MET" if r >= factor else "MISSED"))

    thr("10,000 × 4 KiB send" if workloads.get("small", {}).get("files") == 10000 else "small files send",
        "small", "tar+sync", 1.0)
    thr("10,000 × 4 KiB vault import" if workloads.get("vault", {}).get("files") == 10000 else "small files vault import",
        "vault", "cp+sync", 1.0)
    fsz = fmt_size(workloads.get("file-send", {}).get("bytes", GIB))
    thr(f"{fsz} send", "file-send", "scp", 1.25)
    thr(f"{fmt_size(workloads.get('file-get', {}).get('bytes', GIB))} get", "file-get", "scp", 1.25)
    m = workloads.get("medium", {})
    thr(f"{m.get('files', 100)} × {fmt_size(m.get('bytes', 100 * 10 * MIB) // max(m.get('files', 100), 1))}",
        "medium", "scp", 1.25)
    for wl in ("file-send", "file-get", "big", "medium"):
        p, b = get(figs, wl, "p2pfs"), get(figs, wl, "scp")
        name = f"CPU both ends per GiB ({wl})"
        if p is None or b is None or p.cpu_s is None or b.cpu_s is None:
            if wl in ("file-send", "file-get"):
                out.append((name, "≤ scp's", "not measured", "NOT MEASURED"))
            continue
        out.append((name, "≤ scp's", f"{p.cpu_per_gib:.2f} vs {b.cpu_per_gib:.2f} CPU s/GiB",
                    "MET" if p.cpu_per_gib <= b.cpu_per_gib else "MISSED"))
    sides = {"file-send": ("sender", "receiver"), "file-get": ("fetcher", "server"), "big": ("sender", "receiver")}
    for wl, (cn, sn) in sides.items():
        p = get(figs, wl, "p2pfs")
        sz = fmt_size(workloads[wl]["bytes"]) if "bytes" in workloads.get(wl, {}) else {"big": "big file"}.get(wl, "one file")
        name = f"peak RSS per side, {sz} {'get' if wl == 'file-get' else 'send'}"
        if p is None or p.rss_s is None:
            out.append((name, "< 64 MiB", "not measured", "NOT MEASURED"))
            continue
        worst = max(p.rss_c, p.rss_s)
        out.append((name, "< 64 MiB", f"{cn} {p.rss_c:.1f} MiB, {sn} {p.rss_s:.1f} MiB (max over runs)",
                    "MET" if worst < 64 else "MISSED"))
    p, b = get(figs, "tiny", "p2pfs"), get(figs, "tiny", "scp")
    if p is None or b is None:
        out.append(("one 1 KiB file end to end", "≤ 0.5× scp", "not measured", "NOT MEASURED"))
    else:
        r = p.wall / b.wall
        out.append(("one 1 KiB file end to end", "≤ 0.5× scp",
                    f"{r:.2f}× ({p.wall * 1000:.1f} vs {b.wall * 1000:.1f} ms, medians)", "MET" if r <= 0.5 else "MISSED"))
    p = get(figs, "conn", "p2pfs")
    if p is None:
        out.append(("connection set-up", "median < 10 ms", "not measured", "NOT MEASURED"))
    else:
        out.append(("connection set-up", "median < 10 ms",
                    f"{p.wall * 1000:.1f} ms (a whole `remote list` process)", "MET" if p.wall < 0.010 else "MISSED"))
    # aggregate of the concurrent senders vs one sender of small files
    p, b = get(figs, "concurrent", "p2pfs"), get(figs, "small", "p2pfs")
    if p is None or b is None or not p.rate or not b.rate:
        out.append(("concurrent senders, aggregate", "≥ one sender's files/s", "not measured", "NOT MEASURED"))
    else:
        r = p.rate / b.rate
        out.append(("concurrent senders, aggregate", "≥ one sender's files/s (the 10,000-file send)",
                    f"{r:.2f}× ({p.figure_str()} vs {b.figure_str()})", "MET" if r >= 1 else "MISSED"))
    if not conc:
        out.append(("concurrent senders", "all complete", "not measured", "NOT MEASURED"))
    else:
        senders = workloads.get("concurrent", {}).get("senders", 16)
        expect = workloads.get("concurrent", {}).get("files", 0)
        bad = [c for c in conc if c[2] != 0 or c[3] != expect]
        tot_fail = sum(c[2] for c in conc)
        desc = (f"{len(conc) - len(bad)} of {len(conc)} runs complete; {tot_fail} of {senders * len(conc)} sends failed"
                if bad else f"every run: {senders} of {senders} senders completed, {expect} files stored")
        out.append((f"{senders} concurrent senders", "all complete", desc, "MISSED" if bad else "MET"))
    return out


# ---------------------------------------------------------------- output
def title_of(wl, tmpl, workloads):
    s = workloads.get(wl, {})
    files = s.get("files", 0)
    return tmpl.format(size=fmt_size(s.get("bytes", 0)), files=f"{files:,}",
                       each=fmt_size(s.get("bytes", 0) // files) if files else "?",
                       senders=s.get("senders", "?"), per=files // max(s.get("senders", 1), 1))


def workload_table(wl, kind, fl):
    p = get({wl: fl}, wl, "p2pfs")
    if kind == "latency":
        head = ["tool", "median ms", "per s", "CPU client ms", "CPU server ms", "RSS client MiB", "RSS server MiB", "p2pfs / this (time)"]
    else:
        unit = "files/s" if kind == "files" else "MiB/s"
        head = ["tool", "wall s", unit, "CPU client s", "CPU server s", "CPU both s", "CPU s/GiB", "RSS client MiB", "RSS server MiB", "p2pfs / this"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in fl:
        r = ratio(p, f) if f is not p else None
        rs = f"{r:.2f}×" if r is not None else ("–" if f is p else "n/a")
        name = f"**{f.label}**" if f is p else f.label
        if f.tool.endswith("+sync"):
            cpu_s = rss_s = "(as above)"
        else:
            cpu_s = "–" if f.cpu_s is None else None
            rss_s = "–" if f.rss_s is None else f"{f.rss_s:.1f}"
        if kind == "latency":
            # GNU time gives a process's CPU in 10 ms steps (truncated): a
            # client that takes less shows 0, which is not a measurement.
            cpu_c = f"{f.cpu_c * 1000:.1f}" if f.cpu_c >= 0.010 else "< 10 (GNU time's step)"
            cells = [name, f"{f.wall * 1000:.1f}", num(f.rate, 1), cpu_c,
                     cpu_s if cpu_s is not None else f"{f.cpu_s * 1000:.1f}", f"{f.rss_c:.1f}", rss_s, rs]
        else:
            cells = [name, f"{f.wall:.2f}", num(f.rate, 1), f"{f.cpu_c:.2f}",
                     cpu_s if cpu_s is not None else f"{f.cpu_s:.2f}",
                     f"{f.cpu:.2f}" if not f.tool.endswith("+sync") else "(as above)",
                     num(f.cpu_per_gib) if f.cpu_per_gib is not None and not f.tool.endswith("+sync") else "–",
                     f"{f.rss_c:.1f}", rss_s, rs]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    return lines


def group_fails(fl):
    """'run R: N× LINE (WHAT, WHAT…)' — one line per run and distinct error line."""
    groups = collections.OrderedDict()
    for _, run, what, line in fl:
        groups.setdefault((run, line), []).append(what)
    out = []
    for (run, line), whats in groups.items():
        n = f"{len(whats)}× " if len(whats) > 1 else ""
        out.append(f"run {run}: {n}{line} ({', '.join(whats)})")
    return out


def md_cell(s):
    return str(s).replace("|", "\\|")


def chart(figs, workloads, machine, png, conc):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=False)
        try:
            import matplotlib  # noqa: F401,F811
        except ImportError:
            cmd = ["apt-get", "install", "-y", "-q", "python3-matplotlib"]
            if os.geteuid() != 0:
                cmd = ["sudo"] + cmd
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            sys.path.append("/usr/lib/python3/dist-packages")
            try:
                import matplotlib  # noqa: F401,F811
            except ImportError:
                return "matplotlib could not be installed (pip, apt python3-matplotlib): no chart"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(wl, t, k) for wl, t, k in WORKLOADS if figs.get(wl)]
    if not shown:
        return "nothing measured: no chart"
    cols = 3
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.6 * rows + 1), squeeze=False)
    targets_x = {"file-send": ("scp", 1.25), "file-get": ("scp", 1.25), "medium": ("scp", 1.25),
                 "small": ("tar+sync", 1.0), "vault": ("cp+sync", 1.0), "tiny": ("scp", 0.5)}
    for ax, (wl, tmpl, kind) in zip(axes.flat, shown):
        fl = figs[wl]
        vals = [f.wall * 1000 if kind == "latency" else f.rate for f in fl]
        colors = ["#d62728" if f.tool == "p2pfs" else ("#7f7f7f" if f.tool.endswith("+sync") else "#1f77b4") for f in fl]
        y = range(len(fl))
        ax.barh(list(y), vals, color=colors)
        ax.set_yticks(list(y))
        ax.set_yticklabels([f.label for f in fl], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title_of(wl, tmpl, workloads).replace(" into one serve", ""), fontsize=9)
        ax.set_xlabel({"latency": "median ms per command (lower is better)", "files": "files/s",
                       "bytes": "MiB/s"}[kind], fontsize=8)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:,.0f}" if v >= 10 else f" {v:.1f}", va="center", fontsize=7)
        if wl in targets_x:
            b = get(figs, wl, targets_x[wl][0])
            if b is not None:
                tv = (b.wall * 1000 if kind == "latency" else b.rate) * targets_x[wl][1]
                ax.axvline(tv, color="#2ca02c", linestyle="--", linewidth=1)
                ax.text(tv, len(fl) - 0.5, f" target {targets_x[wl][1]:g}× {b.label}", color="#2ca02c", fontsize=7)
        if wl == "concurrent" and conc:
            failed = sum(c[2] for c in conc)
            sends = len(conc) * workloads.get("concurrent", {}).get("senders", 0)
            ax.set_xlabel("files/s stored — " +
                          (f"{failed} of {sends} sends FAILED" if failed
                           else f"all {sends} sends completed"), fontsize=8,
                          color="#d62728" if failed else "#2ca02c")
        ax.margins(x=0.25)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"p2pfs {machine.get('commit', '?')} vs baselines — {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
                 f"flags: {machine.get('flags', '?')} — medians of {machine.get('runs', '?')} runs, {machine.get('date', '')}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(png, dpi=90)
    return None


HOW = """\
* **CPU and peak RSS** come from GNU time (`/usr/bin/time -f '%U %S %M'`,
  i.e. `wait4()` rusage of a process and every descendant it waited for), CPU
  = user + sys; **wall** is bash's `$EPOCHREALTIME` around the command (GNU
  time's `%e` has 10 ms steps). Every timed command runs after an untimed
  `sync`, with its input read once before (warm page cache). Figures are
  medians over the runs (conn and 1 KiB: over every command of every run, and
  their client CPU is the mean, as rusage moves in 10 ms steps); RSS is the
  maximum over the runs. MiB/s = data bytes / 2^20 / median wall.
* **p2pfs push** (send, DIR send, 1 KiB send): fresh receiver and sender homes
  per run (`init`, `trust add`: not timed), `p2pfs serve --listen
  127.0.0.1:0 --no-mdns` under GNU time for its whole life (start, the
  transfer, stop: the *server* columns), `p2pfs send -q PATH
  NODEID@127.0.0.1:PORT` timed (the *client* columns). send exits 0 only once
  the receiver committed and fsynced everything.
* **p2pfs get**: one serve, started without any passphrase, serves every run; its
  CPU is the delta of `/proc/PID/stat` utime+stime over the fetch (read until
  it stops moving), its peak RSS the VmHWM after `echo 5 >
  /proc/PID/clear_refs`. The fetched file is `cmp`-checked every run.
* **ssh baselines** (scp -c aes256-gcm@openssh.com -o Compression=no, `tar c |
  ssh tar x`, `rsync -a -e ssh`, `ssh true`): a private sshd on 127.0.0.1 (its
  own port, keys and config in the temp dir) under GNU time, started per
  measurement, so its figures are every sshd process of that transfer
  (sftp-server, the remote tar or rsync included).
* **+ sync** rows: the wall time of the command plus that of the `sync` right
  after it (`sync -- FILE DIR` for one file, `sync -f DIR`, i.e. syncfs, for a
  tree): the durable figure, as p2pfs acknowledges only after fsync. The
  target table names which row a target uses; plain scp is the stricter one.
* **sendme**: `sendme send --relay disabled --ticket-type addresses
  --magic-ipv4-addr 127.0.0.1:0 PATH` once per workload (its hashing/import
  before the ticket is not timed; the notes give it), then per run `sendme
  receive --relay disabled TICKET` in a fresh directory (timed); the sender's
  CPU and VmHWM from /proc as for get. sendme does not fsync.
* **vault import**: `p2pfs vault import DIR` into a fresh home (fsyncs what it
  stores) vs `cp -r DIR DEST` + `sync -f DEST`.
* **Connection set-up**: `p2pfs remote list NODEID@127.0.0.1:PORT` — the
  smallest request p2pfs has: QUIC + TLS 1.3, Noise IK with the TLS exporter as
  prologue, key confirmation, one listing request, close — timed one by one
  against a long-lived serve (its CPU from /proc, divided by the number of
  connections), vs `ssh HOST true` to one private sshd (its CPU / connections;
  this runs the remote login shell, rc files included) and vs `ssh -s HOST
  sftp` with stdin at EOF (sshd's in-process sftp subsystem: the SSH set-up
  without any shell).
  The 1 KiB file: `p2pfs send --again` of a 1 KiB file to that serve (`--again`:
  the same file is stored each time, not found unchanged) vs scp of it to a new name.
* **Concurrent senders**: each sender is its own node, trusted by the
  receiver, with its own folder; all wait for one file to appear and then
  exec `p2pfs send` together into one fresh serve. Wall = from the release to
  the last exit; files/s = files sent / wall; client CPU = sum over the
  senders, client RSS = the largest sender. Failures are the exit codes and
  last lines of the senders that failed; the receiving vault is counted.
* **Small files** go into fresh directories (a new receiver home, a new
  destination per run and tool), deleted only at the end: on this ext4
  without journal, creating many files right after deleting many is 2–8×
  slower. The many-file workloads run first.
* Ratios are p2pfs / baseline throughput (higher is better for p2pfs); for the
  latency rows p2pfs / baseline time (lower is better).
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    a = ap.parse_args()

    rows = read_results(a.results)
    machine, workloads, skips, fails, notes, conc = read_meta(a.meta)
    figs = compute(rows, workloads, conc)
    tg = targets(figs, workloads, conc, fails)
    flags = machine.get("flags", "?")

    md = ["# Benchmarks", ""]
    md.append(f"Generated by `scripts/bench.sh` on {machine.get('date', '?')} (p2pfs {machine.get('commit', '?')}), "
              f"medians of {machine.get('runs', '?')} runs{' (BENCH_QUICK=1: sizes scaled down)' if machine.get('quick') == '1' else ''}. "
              "Loopback (127.0.0.1): both ends share the same cores, so CPU per byte matters as much as speed. "
              "Chart: [bench.png](bench.png).")
    md.append("")
    if machine.get("note"):
        md += [f"**Note:** {machine['note']}", ""]
    md.append("![p2pfs vs baselines](bench.png)")
    md.append("")
    md += ["## Machine", "", "| | |", "|---|---|"]
    for k, lab in [("cpu", "CPU"), ("cores", "cores"), ("flags", "CPU flags (aes avx2 avx512f pclmulqdq sha_ni vaes vpclmulqdq)"),
                   ("mem", "memory"), ("kernel", "kernel"), ("fs", "file system of the temp dir"), ("commit", "p2pfs commit"),
                   ("p2pfs", "p2pfs version"), ("ssh", "OpenSSH"), ("rsync", "rsync"), ("tar", "tar"), ("sendme", "sendme"),
                   ("date", "date (UTC)"), ("cmdline", "command line"), ("duration_s", "duration"),
                   ("load_start", "load average at start"), ("load_end", "load average at end")]:
        if k in machine:
            v = machine[k]
            if k == "cmdline":
                v = f"`{v}`"
            if k == "duration_s":
                v = f"{int(v) // 60} min {int(v) % 60} s"
            md.append(f"| {lab} | {v} |")
    md.append("")
    md += ["## Targets", "", "| target | wanted | measured | verdict |", "|---|---|---|---|"]
    for name, want, got, verdict in tg:
        md.append(f"| {md_cell(name)} | {md_cell(want)} | {md_cell(got)} | **{verdict}** |")
    md.append("")
    md += ["## Figures per workload", "",
           "Client = the command the user runs (sender, fetcher, importer); server = the receiving/serving side "
           "(p2pfs serve, sshd with everything it forked, the sendme sender). CPU in seconds (user + sys), "
           "RSS = peak resident set in MiB (max over runs). Ratio = p2pfs / that row.", ""]
    out = [f"p2pfs benchmark — {machine.get('date', '?')}, p2pfs {machine.get('commit', '?')}, {machine.get('runs', '?')} runs",
           f"CPU: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, flags: {flags}", ""]
    for wl, tmpl, kind in WORKLOADS:
        fl = figs.get(wl)
        if not fl:
            continue
        t = title_of(wl, tmpl, workloads)
        tab = workload_table(wl, kind, fl)
        md += [f"### {t}", ""] + tab + [""]
        for n in notes.get(wl, []):
            md.append(f"* {n}")
        if wl == "concurrent" and conc:
            md += ["", "| run | senders completed | failed | files in the receiving vault |", "|---|---|---|---|"]
            for run, ok, failed, stored in conc:
                md.append(f"| {run} | {ok} | {failed} | {stored} of {workloads.get('concurrent', {}).get('files', '?')} |")
        wf = group_fails([f for f in fails if f[0] == wl])
        if wf:
            md += ["", "Failures (the error lines the failed commands printed):", "", "```"] + wf + ["```"]
        md.append("")
        out += [f"== {t}   [CPU flags: {flags}]"] + tab + [""]
        out += [f"   failure: {line}" for line in wf]
        if wf:
            out.append("")
    if skips:
        md += ["## Skipped", ""] + [f"* {w}: {why}" for w, why in skips] + [""]
    md += ["## How each figure is measured", "", HOW]
    md.append("Figures on a shared or loaded machine are indicative only: compare the rows of one run, "
              "not runs on different days. Each workload lists the load average at the start of its runs.")
    md.append("")

    out += [f"targets   [CPU flags: {flags}]"]
    for name, want, got, verdict in tg:
        out.append(f"  {verdict:12s} {name}: {want} — {got}")
    for w, why in skips:
        out.append(f"  skipped: {w}: {why}")

    msg = chart(figs, workloads, machine, a.png, conc)
    if msg:
        md.append(f"(chart: {msg})")
        out.append(f"chart: {msg}")
    else:
        out.append(f"chart: {a.png}")
    with open(a.md, "w") as f:
        f.write("\n".join(md) + "\n")
    out.append(f"report: {a.md}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
