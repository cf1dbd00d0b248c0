#!/usr/bin/env python3
"""crash-campaign.py — a randomized kill -9 campaign against `p2pfs send` /
`p2pfs serve` on loopback. A script, not a test: CI does not run it.

What one trial does
  1. Makes a fresh trial directory (new name, never reused) holding two fresh
     nodes — a receiver and a sender (`p2pfs init`, P2PFS_PASSPHRASE,
     P2PFS_HOME) — the receiver trusting the sender (`trust add ID`), and a
     fresh *mixed folder*: a few subdirectories (sometimes an empty one),
     many empty / 1-byte / few-KiB files, some of 100 KiB-2 MiB, sometimes
     one of 8-32 MiB, rarely (--huge-prob) one of 33-44 MiB (the receiver
     writes its first resumable checkpoint of a file after 32 MiB, so only
     such a file can leave a resumable partial behind a kill -9 of the
     receiver). Contents come from a PRNG seeded by the trial seed.
  2. Starts `p2pfs serve --listen 127.0.0.1:0 --no-mdns` on the receiver
     and `p2pfs send --json FOLDER RECEIVER_ID@127.0.0.1:PORT` on the sender
     (the key given, so no first-contact prompt: the same effect as
     --trust-new, and it works with older binaries too).
  3. SIGKILLs the receiver, the sender or both (--kill; mixed = 60% / 25% /
     15%) at a random moment, by one of four triggers: "before start"
     (5%: between the spawn and the `start` event, i.e. during connect and
     handshake), "time" (a uniform fraction 0..1.05 of the expected data
     phase after `start`, the duration learnt from unkilled calibration
     transfers at the start and corrected by the re-sends), "file_done"
     (right after the k-th `file_done` event, k uniform), and, for half the
     folders holding a file over 32 MiB, "after checkpoint" (0-50 ms after
     the receiver's first `.part` state file appears in staging). The phase
     is classified from the sender's events and the receiver's staging at
     that instant: before connect / before the first file_done / mid-file
     (a reception's data file was in staging) / between files / after all
     sent.
  4. Receiver killed: `vault verify` (keyless) on the raw crash state (the
     `.part` state files left are copied to crash-staging/ and decoded: a
     checkpoint without the sealed file key cannot resume), then serve is
     started again on the same port (as a restarted daemon would be). The killed sender's own outcome (exit code, message, time to
     notice the dead receiver) is collected in the background, without
     holding the campaign up; if it had not connected yet when the receiver
     died, the campaign waits for it first (it may connect to the restarted
     receiver and finish).
  5. `vault verify --full` on the receiver, with serve running (the vault
     lock is shared while storing, and an unlock takes it exclusively only
     when no store is in progress, so serve need not stop), must exit 0;
     `vault list --json` must list only complete files of the folder.
  6. Re-sends the same folder until it succeeds (--max-resends attempts),
     then checks: `vault/staging` holds nothing once the re-send succeeded
     (waiting up to --settle seconds for a superseded connection to finish;
     any `.part` left is a stale resumable partial, a failure); every source
     file is listed, every copy with the source's size and one BLAKE3 per
     name, equal to the one the sender reported; no unexpected entries;
     `vault verify --full` passes; `vault export FOLDER` (with --force when
     a name is stored twice) reproduces every file byte for byte (SHA-256
     against the source). Files stored twice (a re-send stores files that
     had already arrived again: a known open issue) are counted as
     duplicates, not failures. Every output is searched for "panicked".
  7. Stops serve with SIGTERM.

Real failures (exit status 1): a verify that fails, a content mismatch, a
missing file, a stale partial, a panic, a re-send that never succeeds, a
serve that cannot be restarted, a sender that never notices a dead
receiver (--notice-timeout), an export that fails. Notes (reported, not
failures): a checkpointed partial the re-send did not resume, leftovers in
staging that are not `.part` files. Every command of a trial and its
output is written to its directory's commands.log; --keep keeps the
directories of failed trials and of trials with a note.

Usage
  scripts/crash-campaign.py [--bin PATH] [--trials N] [--seed S]
      [--kill receiver|sender|both|mixed] [--keep] [--json FILE]
  Without --bin, `cargo build --release` runs in the repository holding
  this script and target/release/p2pfs is used. A single trial can be
  replayed with --replay TRIAL_SEED (the seed printed for each trial; the
  plan — folder, who is killed, when — is the same; timing is not exact).

Standard library only; every child runs in its own process group with a
timeout and is SIGKILLed (by its process group id) on Ctrl-C or exit.
"""

import argparse
import atexit
import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1 << 20
KiB = 1 << 10

# ----------------------------------------------------------------- processes

_LIVE = set()
_LIVE_LOCK = threading.Lock()
INTERRUPTED = threading.Event()


class Proc:
    """A child process (own process group), its stdout lines with arrival
    times, parsed NDJSON events, stderr, exit code and exit time."""

    def __init__(self, argv, env, cwd=None, what=None):
        self.what = what or " ".join(argv)
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.p.pid
        self.out = []  # (t, line)
        self.err = []  # (t, line)
        self.events = []  # (t, dict)
        self.cond = threading.Condition()
        self.rc = None
        self.t_exit = None
        self.timed_out = False
        self.done = threading.Event()
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._readers = [
            threading.Thread(target=self._read, args=(self.p.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.p.stderr, False), daemon=True),
        ]
        for r in self._readers:
            r.start()
        threading.Thread(target=self._wait, daemon=True).start()

    def _read(self, f, is_out):
        for raw in iter(f.readline, b""):
            t = time.monotonic()
            s = raw.decode("utf-8", "replace")
            with self.cond:
                if is_out:
                    self.out.append((t, s))
                    if s.startswith("{"):
                        try:
                            self.events.append((t, json.loads(s)))
                        except ValueError:
                            pass
                else:
                    self.err.append((t, s))
                self.cond.notify_all()
        f.close()

    def _wait(self):
        rc = self.p.wait()
        t = time.monotonic()
        for r in self._readers:
            r.join(timeout=10)
        with self.cond:
            self.rc = rc
            self.t_exit = t
            self.cond.notify_all()
        self.done.set()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def alive(self):
        return not self.done.is_set()

    def wait(self, timeout):
        """Waits up to `timeout` s; the exit code, or None if still running."""
        self.done.wait(timeout)
        return self.rc

    def wait_for(self, pred, timeout):
        """Waits until pred() (under the lock) holds or the process exits."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                if pred():
                    return True
                if self.rc is not None:
                    return pred()
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))

    def signal(self, sig):
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.done.wait(15)
        return self.rc

    def stdout(self):
        with self.cond:
            return "".join(s for _, s in self.out)

    def stderr(self):
        with self.cond:
            return "".join(s for _, s in self.err)

    def all_text(self):
        return self.stdout() + self.stderr()

    def evs(self):
        with self.cond:
            return [e for _, e in self.events]

    def describe(self):
        return (
            f"$ {self.what}\n-> rc={self.rc}{' (timed out)' if self.timed_out else ''}\n"
            f"--- stdout\n{self.stdout()}--- stderr\n{self.stderr()}---"
        )


def kill_all_children():
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        p.signal(signal.SIGKILL)
    for p in procs:
        p.done.wait(5)


def run(argv, env, cwd=None, timeout=60.0, what=None):
    p = Proc(argv, env, cwd=cwd, what=what)
    if p.wait(timeout) is None:
        p.timed_out = True
        p.kill9()
    return p


# ----------------------------------------------------------------- nodes

PASSPHRASE = "crash campaign passphrase"


LOG_FILTER = None  # --log: P2PFS_LOG for every command


def base_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PFS_")}
    env["LC_ALL"] = "C"
    env.pop("RUST_LOG", None)
    if LOG_FILTER:
        env["P2PFS_LOG"] = LOG_FILTER
    return env


def write_log(path, procs):
    """Every command of a trial, its exit code and output (commands.log)."""
    try:
        with open(path, "a") as f:
            for p in procs:
                f.write(f"[+{p.t0 - procs[0].t0:.3f}s] " + p.describe() + "\n\n")
    except OSError:
        pass


class Node:
    def __init__(self, ctx, home, log):
        self.ctx = ctx
        self.home = home
        self.env = base_env()
        self.env["P2PFS_HOME"] = home
        self.env["P2PFS_PASSPHRASE"] = PASSPHRASE
        self.log = log  # every Proc of the trial, for the panic grep
        self.id = None

    def argv(self, args):
        return [self.ctx.bin, "-q"] + list(args)

    def run(self, *args, cwd=None, timeout=60.0):
        p = run(self.argv(args), self.env, cwd=cwd, timeout=timeout,
                what=f"P2PFS_HOME={self.home} p2pfs -q {' '.join(args)}")
        self.log.append(p)
        return p

    def spawn(self, *args, cwd=None):
        p = Proc(self.argv(args), self.env, cwd=cwd,
                 what=f"P2PFS_HOME={self.home} p2pfs -q {' '.join(args)}")
        self.log.append(p)
        return p

    def vault_dir(self):
        return os.path.join(self.home, "vault")

    def staging(self):
        d = os.path.join(self.home, "vault", "staging")
        try:
            return sorted(os.listdir(d))
        except FileNotFoundError:
            return []


class HarnessError(Exception):
    pass


class TrialAbort(Exception):
    """Ends a trial whose failure is already recorded."""


def must(p, what):
    if p.rc != 0:
        raise HarnessError(f"{what} failed:\n{p.describe()}")
    return p


def init_node(node, name):
    must(node.run("init", "--name", name), f"init {name}")
    idj = json.loads(must(node.run("id", "--json"), "id").stdout())
    node.id = idj["id"]


LISTEN_RE = re.compile(r"listening:\s+127\.0\.0\.1:(\d+)")


def start_serve(node, port, tries=1):
    """serve on 127.0.0.1:PORT (0: any); returns (Proc, port) or raises."""
    last = None
    for i in range(tries):
        p = node.spawn("serve", "--listen", f"127.0.0.1:{port}", "--no-mdns")
        ok = p.wait_for(lambda: any("(UDP)" in s for _, s in p.out), 20)
        if ok:
            m = LISTEN_RE.search(p.stdout())
            if m:
                return p, int(m.group(1))
        p.kill9()
        last = p
        time.sleep(0.3 * (i + 1))
    raise HarnessError(f"serve did not start on port {port}:\n{last.describe()}")


def stop_serve(p, within=20.0):
    """SIGTERM; returns True if it stopped in time (else SIGKILL)."""
    if not p.alive():
        return True
    p.signal(signal.SIGTERM)
    if p.wait(within) is None:
        p.kill9()
        return False
    return True


# ----------------------------------------------------------------- folders

BASE_NAMES = ["a", "x", "notes.txt", "IMG_0001.jpg", "data file.bin", "résumé.txt",
              "log-2025.txt", "core", "README", "v1.2.3.tar", "ünïcode", "z z"]
DIR_NAMES = ["sub", "photos", "deep", "with space", "docs", "ä", "2025", "tmp.d"]


def write_random_file(path, size, rng):
    """Writes `size` PRNG bytes; returns the SHA-256 hex."""
    h = hashlib.sha256()
    g = random.Random(rng.getrandbits(64))
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, MiB)
            b = g.randbytes(n)
            h.update(b)
            f.write(b)
            left -= n
    return h.hexdigest()


def make_folder(rng, root, fname, huge_prob):
    """A mixed folder ROOT/FNAME. Returns (files, empty_dirs): files maps the
    vault name (FNAME/rel) to (path, size, sha256)."""
    top = os.path.join(root, fname)
    os.makedirs(top)
    dirs = [""]
    for i in range(rng.randint(2, 5)):
        parent = rng.choice(dirs)
        d = os.path.join(parent, f"{rng.choice(DIR_NAMES)}{i}")
        os.makedirs(os.path.join(top, d))
        dirs.append(d)
    empty_dirs = []
    if rng.random() < 0.3:
        d = os.path.join(rng.choice(dirs), "empty-dir")
        os.makedirs(os.path.join(top, d), exist_ok=True)
        empty_dirs.append(d)
    sizes = []
    for _ in range(rng.randint(5, 40)):
        r = rng.random()
        sizes.append(0 if r < 0.25 else 1 if r < 0.4 else rng.randint(2, 8 * KiB))
    for _ in range(rng.randint(2, 8)):
        sizes.append(rng.randint(100 * KiB, 2 * MiB))
    r = rng.random()
    if r < huge_prob:
        sizes.append(rng.randint(33 * MiB, 44 * MiB))
    elif r < huge_prob + 0.35:
        sizes.append(rng.randint(8 * MiB, 32 * MiB))
    while sum(sizes) < 5 * MiB:
        sizes.append(rng.randint(100 * KiB, 2 * MiB))
    rng.shuffle(sizes)
    files = {}
    for i, size in enumerate(sizes):
        d = rng.choice([x for x in dirs if x not in empty_dirs])
        rel = os.path.join(d, f"{i:03d}-{rng.choice(BASE_NAMES)}")
        path = os.path.join(top, rel)
        sha = write_random_file(path, size, rng)
        files[f"{fname}/{rel}"] = (path, size, sha)
    # `send` stores a directory as an entry of its own only when it is empty.
    empty = sorted(d for d in set(dirs[1:] + empty_dirs) if not os.listdir(os.path.join(top, d)))
    return files, [f"{fname}/{d}" for d in empty]


def decode_partial_state(path):
    """The fields of a partial's state file `part-<slot>.part` (format version
    2, docs/PROTOCOL.md *Resume*) that tell whether it can resume: size,
    chunk size, whether the sealed file key is there, chunks held."""
    import struct
    b = open(path, "rb").read()
    if b[:8] != b"P2PFSPT\0" or len(b) < 10 + 16 + 32 + 16 + 8 + 4 + 2 + 8 + 32:
        return {"undecodable": True, "len": len(b)}
    o = 10 + 16 + 32 + 16
    size, chunk = struct.unpack(">QI", b[o:o + 12])
    o += 12
    (klen,) = struct.unpack(">H", b[o:o + 2])
    o += 2 + klen
    (held,) = struct.unpack(">Q", b[o:o + 8])
    return {"size": size, "chunk_size": chunk, "sealed_key_len": klen, "held_chunks": held,
            "held_bytes": min(size, held * chunk)}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------- helpers

def norm_msg(s):
    """A message with ids, numbers and addresses blanked, for counting."""
    s = re.sub(r"\b[a-z2-7]{52}\b", "<id>", s)
    s = re.sub(r"\b[0-9a-f]{12,}\b", "<hex>", s)
    s = re.sub(r"\b[a-z0-9]{4}(-[a-z0-9]{4}){3}\b", "<fp>", s)
    s = re.sub(r"127\.0\.0\.1:\d+", "<addr>", s)
    s = re.sub(r"\b\d+(\.\d+)?\b", "N", s)
    return s.strip()[:200]


def error_line(p):
    """The `p2pfs: error:` line of a finished command (or its JSON error)."""
    for _, s in reversed(p.err):
        if "error" in s:
            return s.strip()
    for e in reversed(p.evs()):
        if e.get("event") == "error":
            return e.get("message", "")
    return (p.stderr().strip().splitlines() or [""])[-1]


def data_phase(p):
    """Seconds from a send's `start` event to its last `file_done`."""
    with p.cond:
        ts = [t for t, e in p.events if e.get("event") == "start"]
        td = [t for t, e in p.events if e.get("event") == "file_done"]
    if not ts or not td:
        return None
    return td[-1] - ts[0]


def count_events(evs, kind):
    return sum(1 for e in evs if e.get("event") == kind)


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def fmt_s(x):
    return "-" if x is None else f"{x:.2f}s"


# ----------------------------------------------------------------- the campaign

class Campaign:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin
        self.root = tempfile.mkdtemp(prefix="p2pfs-campaign-", dir=args.tmp)
        self.trials = []
        self.lingering = []  # dicts: trial record, proc, t_kill, deadline, tdir
        self.pending_delete = {}  # tdir -> trial record
        # Duration model: D = c + files * per_file + bytes / rate; `adjust`
        # is a running correction from the unkilled re-sends.
        self.model = None
        self.adjust = 1.0
        self.t_to_start = []

    # ---- calibration

    def calibrate(self):
        cdir = os.path.join(self.root, "calibration")
        os.makedirs(cdir)
        log = []
        recv = Node(self, os.path.join(cdir, "recv"), log)
        send = Node(self, os.path.join(cdir, "send"), log)
        init_node(recv, "recv")
        init_node(send, "send")
        must(recv.run("trust", "add", send.id, "--name", "snd"), "trust add")
        srv, port = start_serve(recv, 0)
        src = os.path.join(cdir, "src")
        rng = random.Random(12345)
        os.makedirs(os.path.join(src, "one"))
        write_random_file(os.path.join(src, "one", "f"), 100, rng)
        os.makedirs(os.path.join(src, "many"))
        for i in range(60):
            write_random_file(os.path.join(src, "many", f"f{i}"), rng.randint(0, 4096), rng)
        os.makedirs(os.path.join(src, "big"))
        write_random_file(os.path.join(src, "big", "f"), 24 * MiB, rng)

        def timed(what):
            best = None
            for _ in range(3):
                p = send.run("send", "--json", what, f"{recv.id}@127.0.0.1:{port}", cwd=src, timeout=120)
                must(p, f"calibration send {what}")
                d = data_phase(p)
                if d is None:
                    raise HarnessError(f"calibration send {what}: no start/file_done events:\n{p.describe()}")
                best = d if best is None else min(best, d)
                t_start = next(t for t, e in p.events if e.get("event") == "start") - p.t0
                self.t_to_start.append(t_start)
            return best

        t_one = timed("one")
        t_many = timed("many")
        t_big = timed("big")
        stop_serve(srv)
        per_file = max(0.0, (t_many - t_one) / 59)
        rate = 24 * MiB / max(0.005, t_big - t_one)
        self.model = (t_one, per_file, rate)
        print(f"calibration: send to `start` event {1000*statistics.median(self.t_to_start):.0f} ms; "
              f"data phase (`start` to last `file_done`) = {t_one*1000:.1f} ms + {per_file*1000:.2f} ms/file "
              f"+ bytes at {rate/MiB:.0f} MiB/s", flush=True)
        for p in log:
            if "panicked" in p.all_text():
                raise HarnessError(f"panic during calibration:\n{p.describe()}")
        shutil.rmtree(cdir, ignore_errors=True)

    def predict(self, nfiles, nbytes):
        c, per_file, rate = self.model
        return (c + nfiles * per_file + nbytes / rate) * self.adjust

    # ---- one trial

    def plan(self, tseed):
        rng = random.Random(tseed)
        mode = self.args.kill
        r = rng.random()  # drawn in every mode: the folder of a seed never depends on --kill
        if mode == "mixed":
            who = "receiver" if r < 0.6 else "sender" if r < 0.85 else "both"
        else:
            who = mode
        r = rng.random()
        trigger = "before start" if r < 0.05 else "time" if r < 0.75 else "file_done"
        return rng, who, trigger

    def run_trial(self, idx, tseed):
        rng, who, trigger = self.plan(tseed)
        rec = {
            "trial": idx, "seed": tseed, "seed_hex": f"{tseed:016x}", "kill": who, "trigger": trigger,
            "failures": [], "notes": [],
        }
        self.trials.append(rec)
        t_start = time.monotonic()
        tdir = os.path.join(self.root, f"t{idx:04d}-{tseed:016x}")
        rec["dir"] = tdir
        os.makedirs(tdir)
        log = []
        recv = Node(self, os.path.join(tdir, "recv"), log)
        send = Node(self, os.path.join(tdir, "send"), log)
        srv = None
        sender = None
        linger = False
        try:
            init_node(recv, "recv")
            init_node(send, "send")
            must(recv.run("trust", "add", send.id, "--name", "snd"), "trust add")
            src = os.path.join(tdir, "src")
            os.makedirs(src)
            fname = f"mix-{idx:04d}"
            files, empty_dirs = make_folder(rng, src, fname, self.args.huge_prob)
            nbytes = sum(s for _, s, _ in files.values())
            rec.update(files=len(files), items=len(files) + len(empty_dirs), bytes=nbytes, empty_dirs=len(empty_dirs),
                       largest=max(s for _, s, _ in files.values()))
            fraction = rng.uniform(0.0, 1.05)
            k_done = rng.randint(1, max(1, len(files) + len(empty_dirs) - 1))
            r_ck = rng.random()
            ck_delay = rng.uniform(0.0, 0.05)
            if trigger == "file_done" and len(files) < 2:
                trigger = rec["trigger"] = "time"
            if rec["largest"] > 32 * MiB and r_ck < 0.5 and trigger != "before start":
                # The receiver checkpoints a partial first after 32 MiB of
                # it: kill just after a `.part` appears, so a resume is due.
                trigger = rec["trigger"] = "after checkpoint"
            expected = self.predict(len(files) + len(empty_dirs), nbytes)
            rec["expected_data_s"] = round(expected, 3)

            srv, port = start_serve(recv, 0)
            target = f"{recv.id}@127.0.0.1:{port}"
            sender = send.spawn("send", "--json", fname, target, cwd=src)

            # ---- the kill
            if trigger == "before start":
                # Somewhere between the spawn and the `start` event (connect,
                # handshake, offer).
                rec["fraction"] = round(fraction, 3)
                sender.wait_for(lambda: any(e.get("event") == "start" for _, e in sender.events),
                                fraction / 1.05 * statistics.median(self.t_to_start))
            elif trigger == "time":
                # A fraction of the expected data phase, from the `start` event.
                rec["fraction"] = round(fraction, 3)
                sender.wait_for(lambda: any(e.get("event") == "start" for _, e in sender.events), 30)
                sender.wait(fraction * expected)
            elif trigger == "after checkpoint":
                rec["checkpoint_delay_s"] = round(ck_delay, 3)
                end = time.monotonic() + 60
                while sender.alive() and time.monotonic() < end:
                    if any(n.endswith(".part") for n in recv.staging()):
                        rec["checkpoint_seen_s"] = round(time.monotonic() - sender.t0, 3)
                        break
                    time.sleep(0.001)
                sender.wait(ck_delay)
            else:
                rec["k_file_done"] = k_done
                sender.wait_for(
                    lambda: sum(1 for _, e in sender.events if e.get("event") == "file_done") >= k_done,
                    120)
            staged = recv.staging()
            evs = sender.evs()
            exited_before = not sender.alive()
            t_kill = time.monotonic()
            if who in ("receiver", "both"):
                srv.signal(signal.SIGKILL)
            if who in ("sender", "both"):
                sender.signal(signal.SIGKILL)
            rec["t_kill_s"] = round(t_kill - sender.t0, 3)
            ts = [t for t, e in sender.events if e.get("event") == "start"]
            if ts:
                rec["t_kill_after_start_s"] = round(t_kill - ts[0], 3)
            n_done = count_events(evs, "file_done")
            rec["file_done_at_kill"] = n_done
            rec["connected_at_kill"] = count_events(evs, "connected") > 0
            rec["sender_exited_before_kill"] = exited_before
            rec["staging_at_kill"] = len(staged)
            rec["part_at_kill"] = sum(1 for n in staged if n.endswith(".part"))
            if not rec["connected_at_kill"] and not exited_before:
                phase = "before connect"
            elif n_done == 0 and not exited_before:
                phase = "before first file_done"
            elif n_done >= len(files) + len(empty_dirs) or exited_before or count_events(evs, "done"):
                phase = "after all sent"
            elif any(n.endswith(".obj") for n in staged):
                phase = "mid-file"
            else:
                phase = "between files"
            rec["phase"] = phase

            if who in ("receiver", "both"):
                srv.done.wait(15)
                rec["serve_killed_rc"] = srv.rc
            if who in ("sender", "both"):
                sender.done.wait(15)

            # ---- the killed / continued send
            ks = {"exited_before_kill": exited_before,
              "all_done_at_kill": n_done >= len(files) + len(empty_dirs)}
            rec["killed_send"] = ks
            if who == "sender" or who == "both":
                ks["rc"] = sender.rc if exited_before else "SIGKILL"
            # ---- restart what was killed
            if who in ("receiver", "both"):
                v = recv.run("vault", "verify", timeout=120)
                rec["verify_raw_rc"] = v.rc
                if v.rc != 0:
                    rec["failures"].append(f"verify (keyless) of the crash state exited {v.rc}: "
                                           f"{error_line(v)}")
                rec["staging_after_kill"] = recv.staging()
                # Keep the state files of checkpointed partials (small) for
                # a post-mortem of a resume that does not happen.
                for n in rec["staging_after_kill"]:
                    if n.endswith(".part"):
                        os.makedirs(os.path.join(tdir, "crash-staging"), exist_ok=True)
                        dst = os.path.join(tdir, "crash-staging", n)
                        shutil.copy2(os.path.join(recv.vault_dir(), "staging", n), dst)
                        try:
                            st = decode_partial_state(dst)
                        except OSError as e:
                            st = {"error": str(e)}
                        st["file"] = n
                        rec.setdefault("crash_partials", []).append(st)
                try:
                    srv, port2 = start_serve(recv, port, tries=4)
                except HarnessError as e:
                    rec["failures"].append(f"serve could not be restarted on port {port}: {e}")
                    srv, port2 = start_serve(recv, 0)
                    rec["notes"].append(f"serve restarted on another port {port2}")
                    target = f"{recv.id}@127.0.0.1:{port2}"
                rec["serve_restart_removed"] = [s.strip() for _, s in srv.err if "removed" in s]
                rec["staging_after_restart"] = recv.staging()
            if who == "receiver":
                if sender.alive() and not rec["connected_at_kill"]:
                    # It may connect to the restarted receiver: let it end
                    # before re-sending, so two sends never overlap.
                    sender.wait(self.args.notice_timeout)
                if sender.alive():
                    linger = True
                    self.lingering.append({"rec": rec, "proc": sender, "t_kill": t_kill,
                                           "deadline": t_kill + self.args.notice_timeout,
                                           "tdir": tdir})
                else:
                    self.finish_killed_send(rec, sender, t_kill)

            # ---- state after the crash
            vf = recv.run("vault", "verify", "--full", timeout=180)
            rec["verify_full_pre_rc"] = vf.rc
            if vf.rc != 0:
                rec["failures"].append(f"verify --full after the crash exited {vf.rc}: {error_line(vf)}")
            pre = recv.run("vault", "list", "--json", timeout=60)
            pre_entries = []
            if pre.rc != 0:
                rec["failures"].append(f"vault list after the crash exited {pre.rc}: {error_line(pre)}")
            else:
                pre_entries = [e for e in json.loads(pre.stdout())
                               if e.get("name", "").startswith(fname + "/")]
            rec["listed_after_crash"] = len(pre_entries)
            for e in pre_entries:
                f = files.get(e["name"])
                if e.get("kind") == "dir":
                    if e["name"] not in empty_dirs:
                        rec["failures"].append(f"after the crash: unexpected dir entry {e['name']!r}")
                elif f is None:
                    rec["failures"].append(f"after the crash: unexpected entry {e['name']!r}")
                elif e.get("size") != f[1]:
                    rec["failures"].append(
                        f"after the crash: {e['name']!r} listed with size {e.get('size')}, source has {f[1]}"
                        " (a partial file listed?)")

            rec["staging_before_resend"] = recv.staging()
            # ---- re-send until it succeeds
            attempts = []
            rec["resends"] = attempts
            ok = False
            sender_b3 = {}
            for e in evs:
                if e.get("event") == "file_done":
                    sender_b3.setdefault(e["name"], set()).add(e.get("blake3"))
            for a in range(self.args.max_resends):
                r = send.run("send", "--json", fname, target, cwd=src, timeout=180)
                revs = r.evs()
                done = [e for e in revs if e.get("event") == "done"]
                att = {
                    "rc": r.rc, "secs": round(r.t_exit - r.t0, 3),
                    "resuming": [(e.get("name"), e.get("percent")) for e in revs if e.get("event") == "resuming"],
                    "bytes_skipped": done[0].get("bytes_skipped") if done else None,
                    "bytes_sent": done[0].get("bytes_sent") if done else None,
                    "file_failed": [e.get("message") for e in revs if e.get("event") == "file_failed"],
                }
                if r.rc != 0:
                    att["error"] = error_line(r)
                if r.timed_out:
                    att["timed_out"] = True
                attempts.append(att)
                for e in revs:
                    if e.get("event") == "file_done":
                        sender_b3.setdefault(e["name"], set()).add(e.get("blake3"))
                if r.rc == 0:
                    ok = True
                    dp = data_phase(r)
                    if not att["resuming"] and not att["bytes_skipped"] and dp:
                        pred = self.predict(len(files) + len(empty_dirs), nbytes) / self.adjust
                        ratio = max(0.5, min(2.0, dp / max(pred, 1e-3)))
                        self.adjust = 0.8 * self.adjust + 0.2 * ratio
                        att["data_phase_s"] = round(dp, 3)
                    break
                time.sleep(0.5 + a)
            rec["resend_attempts"] = len(attempts)
            rec["resuming_events"] = sum(len(a["resuming"]) for a in attempts)
            # "resuming NAME at 0%" (nothing held) and 100% of an empty file
            # skip nothing: a real resume holds part of a non-empty file.
            rec["resumed_files"] = sum(
                1 for a in attempts for n, pc in a["resuming"]
                if pc and files.get(n, (None, 0, None))[1] > 0)
            rec["bytes_skipped"] = sum(a["bytes_skipped"] or 0 for a in attempts)
            if ok and who != "sender" and rec["part_at_kill"] and not rec["bytes_skipped"]:
                cps = rec.get("crash_partials", [])
                why = "; ".join(
                    f"{c.get('file')}: {c.get('held_bytes', 0)/MiB:.1f} of {c.get('size', 0)/MiB:.1f} MiB held, "
                    f"sealed_key_len {c.get('sealed_key_len')}" for c in cps)
                rec["notes"].append("a checkpointed partial (.part) was in staging at the kill, "
                                    f"but the re-send resumed nothing ({why or 'state gone before the restart'})")
            if not ok:
                rec["failures"].append(
                    f"the re-send never succeeded in {len(attempts)} attempts: "
                    + "; ".join(f"rc {a['rc']} {a.get('error', '')}" for a in attempts))
                raise TrialAbort()

            # ---- staging once the re-send succeeded
            t0 = time.monotonic()
            first = recv.staging()
            rec["staging_right_after_resend"] = first
            left = first
            while left and time.monotonic() - t0 < self.args.settle:
                time.sleep(0.2)
                left = recv.staging()
            rec["staging_settle_s"] = round(time.monotonic() - t0, 2) if first else 0.0
            stale = [n for n in left if n.endswith(".part")]
            orphan = [n for n in left if not n.endswith(".part")]
            rec["stale_partials"] = stale
            rec["staging_left"] = left
            if stale:
                rec["failures"].append(
                    f"stale partial(s) in vault/staging {self.args.settle:.0f}s after the re-send succeeded: {left}")
            elif orphan:
                rec["notes"].append(f"staging still holds {orphan} after the re-send")

            # ---- what is listed
            fin = recv.run("vault", "list", "--json", timeout=60)
            if fin.rc != 0:
                rec["failures"].append(f"vault list after the re-send exited {fin.rc}: {error_line(fin)}")
                raise TrialAbort()
            entries = [e for e in json.loads(fin.stdout())
                       if e.get("name", "") == fname or e.get("name", "").startswith(fname + "/")]
            by_name = collections.defaultdict(list)
            for e in entries:
                by_name[e["name"]].append(e)
            missing = []
            mismatch = []
            dups = 0
            for name, (path, size, sha) in sorted(files.items()):
                es = by_name.get(name, [])
                if not es:
                    missing.append(name)
                    continue
                dups += len(es) - 1
                for e in es:
                    if e.get("kind") != "file" or e.get("size") != size:
                        mismatch.append(f"{name!r}: listed kind {e.get('kind')} size {e.get('size')}, source {size}")
                b3 = {e.get("blake3") for e in es}
                if len(b3) > 1:
                    mismatch.append(f"{name!r}: its {len(es)} copies have different BLAKE3 {sorted(b3)}")
                sb = sender_b3.get(name, set())
                if len(sb) > 1:
                    mismatch.append(f"{name!r}: the sender reported different BLAKE3s {sorted(sb)}")
                if sb and b3 and not (b3 <= sb):
                    mismatch.append(f"{name!r}: listed BLAKE3 {sorted(b3)} but the sender reported {sorted(sb)}")
            for d in empty_dirs:
                es = by_name.get(d, [])
                if not es:
                    missing.append(d + "/ (empty dir)")
                else:
                    dups += len(es) - 1
            unexpected = [n for n in by_name if n not in files and n not in empty_dirs]
            ids = {e.get("id") for e in entries}
            lost = [e["name"] for e in pre_entries if e.get("id") not in ids]
            rec["duplicates"] = dups
            rec["missing"] = missing
            rec["mismatch"] = mismatch
            rec["unexpected"] = unexpected
            if missing:
                rec["failures"].append(f"missing from the vault: {missing}")
            if mismatch:
                rec["failures"].append(f"content mismatch: {mismatch}")
            if unexpected:
                rec["failures"].append(f"unexpected entries: {unexpected}")
            if lost:
                rec["failures"].append(f"listed after the crash but gone after the re-send: {lost}")

            # ---- verify --full and export
            vf2 = recv.run("vault", "verify", "--full", timeout=180)
            rec["verify_full_post_rc"] = vf2.rc
            if vf2.rc != 0:
                rec["failures"].append(f"verify --full after the re-send exited {vf2.rc}: {error_line(vf2)}")
            out = os.path.join(tdir, "out")
            exp_args = ["vault", "export", fname, out] + (["--force"] if dups else [])
            ex = recv.run(*exp_args, cwd=tdir, timeout=180)
            rec["export_rc"] = ex.rc
            if ex.rc != 0:
                rec["failures"].append(f"vault export {fname} exited {ex.rc}: {error_line(ex)}")
            else:
                bad = []
                for name, (path, size, sha) in sorted(files.items()):
                    p = os.path.join(out, name[len(fname) + 1:])
                    if not os.path.isfile(p):
                        if name not in missing:
                            bad.append(f"{name!r} not exported")
                    elif sha256_file(p) != sha:
                        bad.append(f"{name!r}: exported bytes differ from the source")
                expected_paths = {n[len(fname) + 1:] for n in files}
                for dp, _, fns in os.walk(out):
                    for fn in fns:
                        rel = os.path.relpath(os.path.join(dp, fn), out)
                        if rel not in expected_paths:
                            bad.append(f"unexpected exported file {rel!r}")
                rec["export_bad"] = bad
                if bad:
                    rec["failures"].append(f"export content mismatch: {bad}")
                    rec["mismatch"] = rec["mismatch"] + bad
        except TrialAbort:
            pass
        except HarnessError as e:
            rec["failures"].append(f"harness: {e}")
        except Exception as e:  # a bug of this script: say so, keep going
            import traceback
            rec["failures"].append(f"harness exception: {e!r}\n{traceback.format_exc()}")
        finally:
            if INTERRUPTED.is_set():
                kill_all_children()
                rec["interrupted"] = True
                raise KeyboardInterrupt
            if srv is not None:
                stopped = stop_serve(srv)
                if not stopped:
                    rec["notes"].append("serve did not stop within 20 s of SIGTERM")
            if sender is not None and not linger:
                sender.kill9()
            rec["staging_after_stop"] = recv.staging()
            rec["secs"] = round(time.monotonic() - t_start, 2)
            self.check_panics(rec, log, exclude=sender if linger else None)
            write_log(os.path.join(tdir, "commands.log"), [p for p in log if not (linger and p is sender)])
            self.pending_delete[tdir] = rec
        return rec

    def finish_killed_send(self, rec, p, t_kill):
        ks = rec["killed_send"]
        ks["rc"] = p.rc if p.rc is not None else "still running"
        if p.rc is not None and p.rc != 0:
            ks["message"] = error_line(p)
        if p.t_exit is not None and not ks.get("exited_before_kill"):
            ks["notice_s"] = round(p.t_exit - t_kill, 3)
        ks["file_done"] = count_events(p.evs(), "file_done")
        if "panicked" in p.all_text():
            rec["failures"].append(f"panic in the killed send:\n{p.describe()}")

    def check_panics(self, rec, log, exclude=None):
        for p in log:
            if p is exclude:
                continue
            t = p.all_text()
            if "panicked" in t:
                rec.setdefault("panics", []).append(p.describe()[-4000:])
                rec["failures"].append(f"panic in `{p.what}`")

    # ---- lingering senders (receiver killed, sender waits for its timeout)

    def reap(self, block):
        still = []
        for L in self.lingering:
            p, rec = L["proc"], L["rec"]
            if block and p.alive():
                p.wait(max(0.0, L["deadline"] - time.monotonic()))
            n_fail = len(rec["failures"])
            if p.alive() and time.monotonic() >= L["deadline"]:
                p.kill9()
                self.finish_killed_send(rec, p, L["t_kill"])
                rec["killed_send"]["rc"] = "hung"
                rec["failures"].append(
                    f"the sender of a killed receiver was still running {self.args.notice_timeout:.0f}s "
                    "after the kill (it never noticed)")
            elif not p.alive():
                self.finish_killed_send(rec, p, L["t_kill"])
                write_log(os.path.join(L["tdir"], "commands.log"), [p])
            else:
                still.append(L)
                continue
            if len(rec["failures"]) > n_fail and rec.get("_printed"):
                for f in rec["failures"][n_fail:]:
                    print(f"  t{rec['trial']:04d} update: FAILURE: {f}", flush=True)
        self.lingering = still
        busy = {L["tdir"] for L in self.lingering}
        for tdir, rec in list(self.pending_delete.items()):
            if tdir in busy:
                continue
            del self.pending_delete[tdir]
            if (rec["failures"] or rec["notes"]) and self.args.keep:
                rec["kept"] = True
                continue
            shutil.rmtree(tdir, ignore_errors=True)

    # ---- reporting

    def line(self, rec):
        ks = rec.get("killed_send", {})
        parts = [
            f"t{rec['trial']:04d} seed={rec['seed']:016x}",
            f"kill={rec['kill']}",
            (f"@file_done#{rec.get('k_file_done')}" if rec["trigger"] == "file_done" else
             f"@checkpoint+{rec.get('checkpoint_delay_s', 0)*1000:.0f}ms" if rec["trigger"] == "after checkpoint" else
             f"@{rec.get('fraction', 0):.2f}" + ("(pre-start)" if rec["trigger"] == "before start" else "")),
            f"[{rec.get('phase', '?')}, {rec.get('file_done_at_kill', '?')}/{rec.get('items', '?')} done]",
            f"{rec.get('bytes', 0)/MiB:.1f}MiB",
        ]
        if "rc" in ks:
            parts.append(f"send rc={ks['rc']}")
        parts.append(f"resends={rec.get('resend_attempts', '?')}")
        if rec.get("resumed_files") or rec.get("bytes_skipped"):
            parts.append(f"resumed={rec['resumed_files']}({rec.get('bytes_skipped', 0)/MiB:.1f}MiB)")
        if rec.get("duplicates"):
            parts.append(f"dups={rec['duplicates']}")
        parts.append(f"{rec.get('secs', 0):.1f}s")
        parts.append("FAIL" if rec["failures"] else "ok")
        return " ".join(parts)

    def summary(self):
        T = self.trials
        c = collections.Counter
        s = {}
        s["trials"] = len(T)
        s["kill"] = dict(c(r["kill"] for r in T))
        s["trigger"] = dict(c(r["trigger"] for r in T))
        s["phase"] = dict(c(r.get("phase", "?") for r in T))
        recv_killed = [r for r in T if r["kill"] in ("receiver", "both")]
        s["verify_raw"] = {"pass": sum(1 for r in recv_killed if r.get("verify_raw_rc") == 0),
                           "fail": sum(1 for r in recv_killed if r.get("verify_raw_rc") not in (0, None))}
        s["verify_full_after_crash"] = {"pass": sum(1 for r in T if r.get("verify_full_pre_rc") == 0),
                                        "fail": sum(1 for r in T if r.get("verify_full_pre_rc") not in (0, None))}
        s["verify_full_after_resend"] = {"pass": sum(1 for r in T if r.get("verify_full_post_rc") == 0),
                                         "fail": sum(1 for r in T if r.get("verify_full_post_rc") not in (0, None))}
        s["resend_attempts"] = dict(sorted(c(r.get("resend_attempts", 0) for r in T).items()))
        s["resend_failed_attempts"] = dict(c(
            f"rc {a['rc']}: {norm_msg(a.get('error', ''))}" for r in T for a in r.get("resends", []) if a["rc"] != 0))
        s["resuming_events"] = sum(r.get("resuming_events", 0) for r in T)
        s["resuming_at_0pct"] = sum(1 for r in T for a in r.get("resends", []) for n, pc in a["resuming"] if not pc)
        s["resumed_files"] = sum(r.get("resumed_files", 0) for r in T)
        ck = [r for r in T if r.get("part_at_kill") and r["kill"] in ("receiver", "both")]
        s["checkpoint_kills"] = len(ck)
        s["checkpoint_kills_resumed"] = sum(1 for r in ck if r.get("bytes_skipped"))
        s["checkpoint_kills_not_resumed"] = [r["seed_hex"] for r in ck if not r.get("bytes_skipped")]
        cps = [c for r in T for c in r.get("crash_partials", [])]
        s["crash_partials"] = len(cps)
        s["crash_partials_without_key"] = sum(1 for c in cps if c.get("sealed_key_len") == 0)
        s["crash_partials_without_key_seeds"] = [
            r["seed_hex"] for r in T if any(c.get("sealed_key_len") == 0 for c in r.get("crash_partials", []))]
        s["trials_with_resume"] = sum(1 for r in T if r.get("bytes_skipped"))
        s["bytes_skipped"] = sum(r.get("bytes_skipped", 0) for r in T)
        s["duplicates"] = sum(r.get("duplicates", 0) for r in T)
        s["trials_with_duplicates"] = sum(1 for r in T if r.get("duplicates"))
        s["stale_partials"] = sum(len(r.get("stale_partials", [])) for r in T)
        s["trials_with_stale_partials"] = sum(1 for r in T if r.get("stale_partials"))
        s["staging_busy_right_after_resend"] = sum(1 for r in T if r.get("staging_right_after_resend"))
        settles = [r["staging_settle_s"] for r in T if r.get("staging_right_after_resend")]
        s["staging_settle_max_s"] = max(settles) if settles else 0
        s["staging_nonempty_after_stop"] = sum(1 for r in T if r.get("staging_after_stop"))
        s["content_mismatches"] = sum(len(r.get("mismatch", [])) for r in T)
        s["missing_files"] = sum(len(r.get("missing", [])) for r in T)
        s["unexpected_entries"] = sum(len(r.get("unexpected", [])) for r in T)
        s["panics"] = sum(len(r.get("panics", [])) for r in T)
        killed_sends = [r["killed_send"] for r in T if r["kill"] == "receiver" and "killed_send" in r]
        s["receiver_killed_send_outcome"] = dict(c(
            ("rc 0: " + ("had exited before the kill" if k.get("exited_before_kill") else
                         "every file_done came before the kill" if k.get("all_done_at_kill") else
                         "finished against the restarted receiver"))
            if k.get("rc") == 0 else f"rc {k.get('rc')}: {norm_msg(k.get('message', ''))}"
            for k in killed_sends))
        notice = [k["notice_s"] for k in killed_sends if "notice_s" in k and k.get("rc") not in (0, "hung")]
        s["notice_s"] = {"n": len(notice), "min": min(notice) if notice else None,
                         "median": statistics.median(notice) if notice else None,
                         "p90": pct(notice, 0.9), "max": max(notice) if notice else None}
        s["sensible_messages"] = sum(
            1 for k in killed_sends if k.get("rc") == 15 and "connection lost" in k.get("message", "")
            and ("resume" in k.get("message", "") or "again" in k.get("message", "")))
        s["serve_restart_cleanups"] = dict(c(norm_msg(x) for r in T for x in r.get("serve_restart_removed", [])))
        s["failed_trials"] = sum(1 for r in T if r["failures"])
        s["seconds_per_trial"] = {"median": statistics.median([r.get("secs", 0) for r in T]) if T else 0,
                                  "max": max([r.get("secs", 0) for r in T]) if T else 0}
        return s

    def print_table(self, s, total_secs):
        rows = [
            ("trials", s["trials"]),
            ("kill: receiver / sender / both",
             f"{s['kill'].get('receiver', 0)} / {s['kill'].get('sender', 0)} / {s['kill'].get('both', 0)}"),
            ("trigger: before start / time in data phase / after a file_done / after a checkpoint",
             f"{s['trigger'].get('before start', 0)} / {s['trigger'].get('time', 0)} / "
             f"{s['trigger'].get('file_done', 0)} / {s['trigger'].get('after checkpoint', 0)}"),
        ]
        for ph in ["before connect", "before first file_done", "mid-file", "between files", "after all sent"]:
            rows.append((f"phase: {ph}", s["phase"].get(ph, 0)))
        rows += [
            ("verify (keyless) of the crash state: pass / fail",
             f"{s['verify_raw']['pass']} / {s['verify_raw']['fail']}"),
            ("verify --full after the crash: pass / fail",
             f"{s['verify_full_after_crash']['pass']} / {s['verify_full_after_crash']['fail']}"),
            ("verify --full after the re-send: pass / fail",
             f"{s['verify_full_after_resend']['pass']} / {s['verify_full_after_resend']['fail']}"),
            ("re-sends needed (attempts: trials)",
             ", ".join(f"{k}: {v}" for k, v in s["resend_attempts"].items())),
            ("resumed partials (files with data held / trials with bytes skipped / MiB skipped)",
             f"{s['resumed_files']} / {s['trials_with_resume']} / {s['bytes_skipped']/MiB:.1f}"),
            ("'resuming' events (all / at 0%, nothing held)",
             f"{s['resuming_events']} / {s['resuming_at_0pct']}"),
            ("receiver killed with a checkpointed partial (.part) in staging: trials / re-send resumed",
             f"{s['checkpoint_kills']} / {s['checkpoint_kills_resumed']}"),
            ("checkpointed partials left by a receiver kill: all / state without the sealed key (cannot resume)",
             f"{s['crash_partials']} / {s['crash_partials_without_key']}"),
            ("duplicates (entries / trials) [known issue]",
             f"{s['duplicates']} / {s['trials_with_duplicates']}"),
            ("stale partials (files / trials)",
             f"{s['stale_partials']} / {s['trials_with_stale_partials']}"),
            ("staging busy right after the re-send (cleared, max s)",
             f"{s['staging_busy_right_after_resend']} ({s['staging_settle_max_s']})"),
            ("staging not empty after serve stopped", s["staging_nonempty_after_stop"]),
            ("content mismatches", s["content_mismatches"]),
            ("missing files", s["missing_files"]),
            ("unexpected entries", s["unexpected_entries"]),
            ("panics", s["panics"]),
            ("receiver killed: sender saw 'connection lost … resume'", s["sensible_messages"]),
            ("receiver killed: time for the sender to notice (min/median/p90/max)",
             f"{fmt_s(s['notice_s']['min'])} / {fmt_s(s['notice_s']['median'])} / "
             f"{fmt_s(s['notice_s']['p90'])} / {fmt_s(s['notice_s']['max'])} (n={s['notice_s']['n']})"),
            ("failed trials", s["failed_trials"]),
            ("wall time", f"{total_secs/60:.1f} min ({s['seconds_per_trial']['median']:.1f} s median per trial)"),
        ]
        w = max(len(r[0]) for r in rows)
        print()
        print("| " + "what".ljust(w) + " | count |")
        print("|-" + "-" * w + "-|-------|")
        for k, v in rows:
            print(f"| {k.ljust(w)} | {v} |")
        print()
        print("receiver killed — the killed send's outcome:")
        for k, v in sorted(s["receiver_killed_send_outcome"].items(), key=lambda kv: -kv[1]):
            print(f"  {v:4d}  {k}")
        if s["resend_failed_attempts"]:
            print("re-send attempts that failed:")
            for k, v in sorted(s["resend_failed_attempts"].items(), key=lambda kv: -kv[1]):
                print(f"  {v:4d}  {k}")
        if s["serve_restart_cleanups"]:
            print("serve restart said:")
            for k, v in s["serve_restart_cleanups"].items():
                print(f"  {v:4d}  {k}")


def build_binary():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"building: cargo build --release in {repo}", flush=True)
    r = subprocess.run(["cargo", "build", "--release"], cwd=repo, timeout=3600)
    if r.returncode != 0:
        sys.exit(f"cargo build --release failed ({r.returncode})")
    return os.path.join(repo, "target", "release", "p2pfs")


def main():
    ap = argparse.ArgumentParser(description="A randomized kill -9 campaign against p2pfs send/serve "
                                             "on loopback (not a test; CI does not run it).",
                                 epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="the p2pfs binary (default: cargo build --release here)")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=None, help="campaign seed (default: random, printed)")
    ap.add_argument("--kill", choices=["receiver", "sender", "both", "mixed"], default="mixed",
                    help="who is killed (mixed: 60%% receiver, 25%% sender, 15%% both)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the directories of failed trials (and of trials with a note)")
    ap.add_argument("--json", metavar="FILE", help="write the summary and every trial's record")
    ap.add_argument("--replay", type=lambda s: int(s, 16), metavar="TRIAL_SEED",
                    help="run one trial with this (hex) trial seed")
    ap.add_argument("--tmp", default="/var/tmp", help="parent of the campaign directory")
    ap.add_argument("--huge-prob", type=float, default=0.08,
                    help="chance of a 33-44 MiB file in a folder (resumable after a receiver kill)")
    ap.add_argument("--max-resends", type=int, default=4)
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds staging may take to empty after a successful re-send")
    ap.add_argument("--notice-timeout", type=float, default=60.0,
                    help="seconds a sender may take to notice a killed receiver")
    ap.add_argument("--log", metavar="FILTER", help="P2PFS_LOG for every command (e.g. info, debug)")
    args = ap.parse_args()
    global LOG_FILTER
    LOG_FILTER = args.log
    if args.bin is None:
        args.bin = build_binary()
    args.bin = os.path.abspath(args.bin)
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"not an executable: {args.bin}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)

    def on_signal(sig, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(kill_all_children)

    camp = Campaign(args)
    seeds = random.Random(args.seed)
    n = 1 if args.replay is not None else args.trials
    print(f"p2pfs crash campaign: {n} trial(s), seed {args.seed}, kill {args.kill}, bin {args.bin}, "
          f"dir {camp.root}, nproc {os.cpu_count()}", flush=True)
    t0 = time.monotonic()
    interrupted = False
    try:
        camp.calibrate()
        for i in range(n):
            tseed = args.replay if args.replay is not None else seeds.getrandbits(64)
            rec = camp.run_trial(i + 1, tseed)
            print(camp.line(rec), flush=True)
            rec["_printed"] = True
            for f in rec["failures"]:
                print("    FAILURE: " + f.replace("\n", "\n      "), flush=True)
            for f in rec["notes"]:
                print("    note: " + f, flush=True)
            camp.reap(block=False)
        camp.reap(block=True)
    except KeyboardInterrupt:
        interrupted = True
        INTERRUPTED.set()
        print("\ninterrupted: killing every child", flush=True)
        kill_all_children()
        for L in camp.lingering:
            L["rec"]["killed_send"]["rc"] = "interrupted"
        camp.lingering = []
        camp.trials = [r for r in camp.trials if "secs" in r and not r.get("interrupted")]
        for tdir in list(camp.pending_delete):
            if not (camp.pending_delete[tdir]["failures"] and args.keep):
                shutil.rmtree(tdir, ignore_errors=True)
    except HarnessError as e:
        print(f"campaign setup failed: {e}", flush=True)
        kill_all_children()
        return 3
    total = time.monotonic() - t0
    s = camp.summary()
    camp.print_table(s, total)
    failed = [r for r in camp.trials if r["failures"]]
    if failed:
        print("\nfailures:")
        for r in failed:
            print(f"  t{r['trial']:04d} seed {r['seed']:016x} (replay: --replay {r['seed']:016x} "
                  f"--kill {args.kill}){' kept in ' + r['dir'] if r.get('kept') else ''}")
            for f in r["failures"]:
                print("    " + f.replace("\n", "\n      "))
    if args.json:
        for r in camp.trials:
            r.pop("_printed", None)
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "bin": args.bin, "nproc": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(total, 1),
                       "model": camp.model, "adjust": camp.adjust, "interrupted": interrupted,
                       "summary": s, "trials": camp.trials}, f, indent=1, default=str)
    if not args.keep or not any(r["failures"] or r["notes"] for r in camp.trials):
        shutil.rmtree(camp.root, ignore_errors=True)
    else:
        print(f"kept: {camp.root}")
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
