//! Helpers shared by the integration tests (`mod util;` in each test file):
//! temporary homes, the real `p2pfs` binary run as a separate process (with
//! a timeout, or as a long-running child that can be killed), random files,
//! BLAKE3 hashing and byte-level access to what is on disk.
//!
//! Every command runs with the `P2PFS_*` variables of the inherited
//! environment removed, so a developer's own node or passphrase can never
//! leak into a test, and with stdin closed, so nothing can wait for a
//! terminal.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Deserialize;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_p2pfs");

/// How long any one command may run before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Exit codes of the binary (`src/cli/mod.rs`, `mod exit`).
pub mod exit {
    pub const FAILURE: i32 = 1;
    pub const WRONG_PASSPHRASE: i32 = 3;
    pub const CORRUPT: i32 = 4;
    pub const NOT_INITIALISED: i32 = 5;
    pub const UNSUPPORTED_VERSION: i32 = 6;
    pub const EXISTS: i32 = 7;
    pub const DISK_FULL: i32 = 8;
    pub const NOT_FOUND: i32 = 9;
    pub const SEALED_DEPOSIT: i32 = 18;
    pub const PARTIAL: i32 = 23;
    pub const INTERRUPTED: i32 = 130;
}

// ---------------------------------------------------------------- randomness

/// `n` random bytes (BLAKE3 XOF seeded from the OS: fast for large files).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    fill_random(&mut out);
    out
}

fn fill_random(buf: &mut [u8]) {
    use rand_core::RngCore;
    let mut seed = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut seed);
    blake3::Hasher::new_keyed(&seed).finalize_xof().fill(buf);
}

/// A random lower-case hex string of `n` bytes (2n digits).
pub fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}

/// Writes `len` random bytes to `path` (creating parents); returns the
/// BLAKE3 hex of the content.
pub fn write_random(path: &Path, len: u64) -> String {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut f = fs::File::create(path).unwrap();
    let mut seed = [0u8; 32];
    {
        use rand_core::RngCore;
        rand_core::OsRng.fill_bytes(&mut seed);
    }
    let mut xof = blake3::Hasher::new_keyed(&seed).finalize_xof();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    hasher.finalize().to_hex().to_string()
}

/// Writes `data` to `path` (creating parents); returns its BLAKE3 hex.
pub fn write_bytes(path: &Path, data: &[u8]) -> String {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
    blake3_hex(data)
}

// ---------------------------------------------------------------- hashing, bytes

/// BLAKE3 of a buffer, lower-case hex (what `b3sum` prints).
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// BLAKE3 of a file's content, lower-case hex.
pub fn blake3_file(path: &Path) -> String {
    try_blake3_file(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn try_blake3_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut |p, m| {
        if m.is_file() {
            out.push(p.to_path_buf());
        }
    });
    out.sort();
    out
}

/// Walks `dir` depth-first. A live node may rename or remove a file while we
/// look (a checkpoint's temporary file), so an entry that vanishes between
/// listing and `stat` is skipped rather than failing the walk.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let Ok(e) = e else { continue };
        let p = e.path();
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("stat {}: {e}", p.display()),
        };
        f(&p, &m);
        if m.is_dir() {
            walk(&p, f);
        }
    }
}

/// A snapshot of a directory tree: relative path → kind, permission bits,
/// and for files length and BLAKE3. Equal snapshots mean nothing changed.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(dir, &mut |p, m| {
        let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let mode = m.permissions().mode() & 0o7777;
        let v = if m.is_file() {
            match try_blake3_file(p) {
                Ok(h) => format!("file {mode:o} {} {h}", m.len()),
                // Vanished while we looked: the tree is still changing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "gone".to_string(),
                Err(e) => panic!("read {}: {e}", p.display()),
            }
        } else if m.is_dir() {
            format!("dir {mode:o}")
        } else {
            format!("other {mode:o} {:?}", fs::read_link(p).ok())
        };
        out.insert(rel, v);
    });
    out
}

/// Position of `needle` in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    (0..=hay.len() - needle.len()).find(|&i| hay[i] == first && &hay[i..i + needle.len()] == needle)
}

/// Files under `dir` whose bytes contain `needle`, with the offset. A file
/// that vanishes between listing and reading (a temporary file renamed by a
/// process still running) is skipped.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<(PathBuf, usize)> {
    files_under(dir)
        .into_iter()
        .filter_map(|p| match fs::read(&p) {
            Ok(data) => find_bytes(&data, needle).map(|o| (p, o)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("read {}: {e}", p.display()),
        })
        .collect()
}

/// XORs the byte at `offset` of `path` with `mask` (non-zero).
pub fn flip_byte(path: &Path, offset: u64, mask: u8) {
    assert_ne!(mask, 0);
    let mut data = fs::read(path).unwrap();
    let i = offset as usize;
    assert!(
        i < data.len(),
        "{} has only {} bytes",
        path.display(),
        data.len()
    );
    data[i] ^= mask;
    fs::write(path, data).unwrap();
}

/// Overwrites bytes at `offset` of `path`.
pub fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut data = fs::read(path).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    fs::write(path, data).unwrap();
}

/// Recomputes the trailing 32-byte BLAKE3 checksum of a vault file (for
/// forging files that are well-formed but hostile).
pub fn fix_checksum(path: &Path) {
    let mut data = fs::read(path).unwrap();
    let n = data.len() - 32;
    let sum = blake3::hash(&data[..n]);
    data[n..].copy_from_slice(sum.as_bytes());
    fs::write(path, data).unwrap();
}

/// Ports that were free a moment ago (for network tests).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- processes

/// The outcome of a finished command.
pub struct Run {
    /// What was run (for messages).
    pub what: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard output as bytes (a file written to `-`).
    pub stdout_bytes: Vec<u8>,
    /// Standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Run {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Asserts exit 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "expected success:\n{self}");
        self
    }

    /// Asserts a given exit code.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), Some(code), "unexpected exit code:\n{self}");
        self
    }

    /// Asserts stdout or stderr contains `s` (case-insensitive).
    #[track_caller]
    pub fn says(self, s: &str) -> Self {
        assert!(
            self.all().to_lowercase().contains(&s.to_lowercase()),
            "expected output to mention {s:?}:\n{self}"
        );
        self
    }

    /// Asserts neither stdout nor stderr contains `s` (case-insensitive).
    #[track_caller]
    pub fn never_says(self, s: &str) -> Self {
        assert!(
            !self.all().to_lowercase().contains(&s.to_lowercase()),
            "output must not mention {s:?}:\n{self}"
        );
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> T {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not the expected JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n-> {} after {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.what, self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A command line for the binary, with a clean environment.
pub struct Cmd {
    cmd: Command,
    what: String,
    timeout: Duration,
    input: Option<Vec<u8>>,
}

impl Cmd {
    /// `p2pfs ARGS` with `--home`-less access to `home` through P2PFS_HOME
    /// (None: no home variable at all), every inherited `P2PFS_*` variable
    /// removed and stdin closed. `P2PFS_TEST_BIN`, when set, runs that
    /// program instead of the built binary (a wrapper for heaptrack or
    /// perf when profiling a test; never set in CI).
    pub fn new<I, S>(home: Option<&Path>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = std::env::var_os("P2PFS_TEST_BIN").unwrap_or_else(|| BIN.into());
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("P2PFS_") {
                cmd.env_remove(&k);
            }
        }
        if let Some(h) = home {
            cmd.env("P2PFS_HOME", h);
        }
        // Progress bars off; stdin never a terminal; errors in English.
        cmd.arg("-q").stdin(Stdio::null()).env("LC_ALL", "C");
        let mut what = format!(
            "P2PFS_HOME={} p2pfs -q",
            home.map(|h| h.display().to_string()).unwrap_or_default()
        );
        for a in args {
            what.push(' ');
            what.push_str(&a.as_ref().to_string_lossy());
            cmd.arg(a);
        }
        Self {
            cmd,
            what,
            timeout: TIMEOUT,
            input: None,
        }
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.what = format!("{k}=… {}", self.what);
        self.cmd.env(k, v);
        self
    }

    /// Gives the process `bytes` on standard input (then end of file).
    pub fn input(mut self, bytes: &[u8]) -> Self {
        self.input = Some(bytes.to_vec());
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.what.push(' ');
        self.what.push_str(&a.as_ref().to_string_lossy());
        self.cmd.arg(a);
        self
    }

    /// Sets the vault passphrase (P2PFS_PASSPHRASE).
    pub fn passphrase(self, p: &str) -> Self {
        self.env("P2PFS_PASSPHRASE", p)
    }

    /// Runs in `dir`.
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs with this umask (to check that p2pfs sets modes itself).
    pub fn umask(mut self, mask: u32) -> Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask(2) is async-signal-safe and cannot fail.
        unsafe {
            self.cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
        self
    }

    /// Changes the timeout of [`Cmd::run`].
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs inside the network namespace `name` (made with `ip netns add`),
    /// as `ip netns exec` would; needs root.
    pub fn in_netns(mut self, name: &str) -> Self {
        use std::os::{fd::AsRawFd, unix::process::CommandExt};
        let ns = fs::File::open(format!("/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("network namespace {name}: {e}"));
        self.what = format!("ip netns exec {name} {}", self.what);
        // SAFETY: setns(2) is async-signal-safe; `ns` stays open in the
        // closure (and is close-on-exec).
        unsafe {
            self.cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// Starts the process without waiting for it.
    pub fn spawn(mut self) -> Proc {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if self.input.is_some() {
            self.cmd.stdin(Stdio::piped());
        }
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        if let (Some(bytes), Some(mut w)) = (self.input.take(), child.stdin.take()) {
            use std::io::Write;
            // A process that exits without reading its input (a refusal)
            // closes the pipe: that is its answer, not a test failure.
            if let Err(e) = w.write_all(&bytes) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "stdin: {e}");
            }
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().unwrap(), stdout.clone()),
            drain(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Proc {
            child,
            what: self.what,
            started: Instant::now(),
            stdout,
            stderr,
            readers,
        }
    }

    /// Runs to completion; panics if it takes longer than the timeout.
    pub fn run(self) -> Run {
        let timeout = self.timeout;
        let mut p = self.spawn();
        match p.wait_timeout(timeout) {
            Some(_) => p.finish(),
            None => {
                let r = p.kill9();
                panic!("timed out after {timeout:?}:\n{r}");
            }
        }
    }
}

/// Runs `p2pfs ARGS` with `home` and an optional passphrase (as
/// P2PFS_PASSPHRASE) to completion, in a clean environment.
pub fn p2pfs<I, S>(home: &Path, passphrase: Option<&str>, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let c = Cmd::new(Some(home), args);
    match passphrase {
        Some(p) => c.passphrase(p),
        None => c,
    }
    .run()
}

fn drain(mut r: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// A running `p2pfs` process. Dropping it kills it (SIGKILL) and reaps it.
pub struct Proc {
    child: Child,
    what: String,
    started: Instant,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Output so far.
    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Error output so far.
    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until stdout or stderr contains `s`; false on timeout or exit.
    pub fn wait_for_output(&mut self, s: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let seen = self.stdout_now().contains(s) || self.stderr_now().contains(s);
            seen || self.child.try_wait().ok().flatten().is_some()
        }) && (self.stdout_now().contains(s) || self.stderr_now().contains(s))
    }

    /// Sends a signal (for example `libc::SIGINT`, a Ctrl-C) without waiting.
    /// Nothing when it has exited and been reaped already.
    pub fn signal(&mut self, sig: i32) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) with a pid this Proc owns and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Sends SIGKILL (if still running) and collects the outcome.
    pub fn kill9(mut self) -> Run {
        let _ = self.child.kill();
        self.finish()
    }

    /// Waits for exit (no timeout: call after [`Proc::wait_timeout`] or a
    /// kill) and collects the outcome.
    pub fn finish(mut self) -> Run {
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Run {
            what: std::mem::take(&mut self.what),
            status,
            stdout: self.stdout_now(),
            stdout_bytes: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr_now(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command run on a pseudo-terminal (`script(1)` from util-linux), as at a
/// user's terminal: what the terminal shows is collected, and lines can be
/// typed. Killed when dropped.
pub struct Pty {
    child: Child,
    shown: Arc<Mutex<Vec<u8>>>,
    stdin: Option<std::process::ChildStdin>,
    reader: Option<JoinHandle<()>>,
}

impl Pty {
    /// Runs the shell command line `cmdline` on a pty in `cwd`, with
    /// `P2PFS_HOME=home` and, when given, `P2PFS_PASSPHRASE`.
    pub fn spawn(cmdline: &str, cwd: &Path, home: &Path, passphrase: Option<&str>) -> Self {
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", cmdline, "/dev/null"])
            .current_dir(cwd)
            .env("P2PFS_HOME", home)
            .env_remove("P2PFS_PASSPHRASE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(p) = passphrase {
            cmd.env("P2PFS_PASSPHRASE", p);
        }
        let mut child = cmd.spawn().expect("script(1) from util-linux");
        let shown = Arc::new(Mutex::new(Vec::new()));
        let reader = drain(child.stdout.take().unwrap(), shown.clone());
        Self {
            stdin: child.stdin.take(),
            child,
            shown,
            reader: Some(reader),
        }
    }

    /// What the terminal showed so far.
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal shows `s`; false on timeout.
    pub fn wait_for(&self, s: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.shown().contains(s))
    }

    /// Types `line` and Enter.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (at most `timeout`, else panics) for the command to exit;
    /// returns its exit code and everything the terminal showed.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < end,
                "still running on the pty after {timeout:?}:\n{}",
                self.shown()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stdin.take();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.code(), self.shown())
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- nodes

/// One entry of `vault list --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub size: u64,
    pub blake3: String,
    /// RFC 3339; null for a stored time RFC 3339 cannot write.
    pub added: Option<String>,
    pub mtime: i64,
    pub mode: String,
    pub origin: Option<String>,
    /// From 1, the oldest version of its file (0: not given, a deposit).
    #[serde(default)]
    pub version: u32,
}

/// The output of `id --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct IdJson {
    pub id: String,
    pub fingerprint: String,
    pub name: String,
    pub vault_key: String,
    pub home: String,
}

/// A node under test: a temporary directory holding its home (`home/`,
/// not created until `init`) and a work directory (`work/`, the current
/// directory of its commands and the place for source and export files).
pub struct Node {
    tmp: Option<tempfile::TempDir>,
    /// The home directory (P2PFS_HOME).
    pub home: PathBuf,
    /// Scratch space outside the home.
    pub work: PathBuf,
    /// The vault passphrase given to commands (None: no passphrase source).
    pub passphrase: Option<String>,
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("p2pfs-test-")
        .tempdir()
        .unwrap()
}

impl Node {
    /// A node with a fresh temporary home and a random passphrase.
    pub fn new() -> Self {
        let tmp = tempdir();
        let home = tmp.path().join("home");
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        Self {
            home,
            work,
            tmp: Some(tmp),
            passphrase: Some(format!("test passphrase {}", random_hex(8))),
        }
    }

    /// A node whose home is `home` (for example a small tmpfs), with its
    /// work directory in a fresh temporary directory.
    pub fn with_home(home: PathBuf) -> Self {
        let mut n = Self::new();
        n.home = home;
        n
    }

    /// Two independent nodes (for network tests).
    pub fn pair() -> (Self, Self) {
        (Self::new(), Self::new())
    }

    /// The vault directory.
    pub fn vault(&self) -> PathBuf {
        self.home.join("vault")
    }

    /// The objects directory.
    pub fn objects(&self) -> PathBuf {
        self.vault().join("objects")
    }

    /// `<id>.obj` of an object.
    pub fn obj(&self, id: &str) -> PathBuf {
        self.objects().join(format!("{id}.obj"))
    }

    /// `<id>.env` of an object.
    pub fn env(&self, id: &str) -> PathBuf {
        self.objects().join(format!("{id}.env"))
    }

    /// `<id>.one` of an object (data and envelope of an object of one
    /// chunk, docs/VAULT.md, *One-file object*).
    pub fn one(&self, id: &str) -> PathBuf {
        self.objects().join(format!("{id}.one"))
    }

    /// The ids of the committed objects: an `<id>.env` or an `<id>.one`.
    pub fn object_ids(&self) -> Vec<String> {
        let f = self.object_files();
        let mut ids: Vec<String> = ["env", "one"]
            .iter()
            .flat_map(|e| f.get(*e).cloned().unwrap_or_default())
            .collect();
        ids.sort();
        ids
    }

    /// Object `id`'s envelope bytes and data bytes, from its two files or
    /// from its one-file object (split by its trailer, read here from the
    /// spec: the envelope's big-endian u32 length, then `P2PFSO1\0`).
    pub fn object_parts(&self, id: &str) -> (Vec<u8>, Vec<u8>) {
        match fs::read(self.one(id)) {
            Ok(b) => {
                let n = b.len();
                assert_eq!(&b[n - 8..], b"P2PFSO1\0", "one-file object trailer");
                let e = u32::from_be_bytes(b[n - 12..n - 8].try_into().unwrap()) as usize;
                let d = n - 12 - e;
                (b[d..n - 12].to_vec(), b[..d].to_vec())
            }
            Err(_) => (
                fs::read(self.env(id)).unwrap(),
                fs::read(self.obj(id)).unwrap(),
            ),
        }
    }

    /// The file holding object `id`'s data (its chunks at the same
    /// offsets in either form), and the data's length.
    pub fn data_file(&self, id: &str) -> (PathBuf, u64) {
        let (_, data) = self.object_parts(id);
        if self.one(id).exists() {
            (self.one(id), data.len() as u64)
        } else {
            (self.obj(id), data.len() as u64)
        }
    }

    /// The file holding object `id`'s envelope, where the envelope starts
    /// in it, and its length.
    pub fn envelope_file(&self, id: &str) -> (PathBuf, u64, u64) {
        let (env, data) = self.object_parts(id);
        if self.one(id).exists() {
            (self.one(id), data.len() as u64, env.len() as u64)
        } else {
            (self.env(id), 0, env.len() as u64)
        }
    }

    /// Object `id`'s envelope bytes (see [`Self::object_parts`]).
    pub fn envelope_of(&self, id: &str) -> Vec<u8> {
        self.object_parts(id).0
    }

    /// Replaces object `id`'s envelope bytes in whichever form it is
    /// stored (a test playing an attacker, or an old release).
    pub fn put_envelope(&self, id: &str, env: &[u8]) {
        if self.one(id).exists() {
            let (_, data) = self.object_parts(id);
            let mut b = data;
            b.extend_from_slice(env);
            b.extend_from_slice(&(env.len() as u32).to_be_bytes());
            b.extend_from_slice(b"P2PFSO1\0");
            fs::write(self.one(id), b).unwrap();
        } else {
            fs::write(self.env(id), env).unwrap();
        }
    }

    /// A path in the work directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.work.join(rel)
    }

    /// A command with this node's home and passphrase, run in `work/`.
    pub fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let c = Cmd::new(Some(&self.home), args).cwd(&self.work);
        match &self.passphrase {
            Some(p) => c.passphrase(p),
            None => c,
        }
    }

    /// Runs a command to completion.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(args).run()
    }

    /// Runs a command with another passphrase.
    pub fn run_with_passphrase<I, S>(&self, pass: &str, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let c = Cmd::new(Some(&self.home), args).cwd(&self.work);
        c.passphrase(pass).run()
    }

    /// Starts a command without waiting for it.
    pub fn spawn<I, S>(&self, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(args).spawn()
    }

    /// `p2pfs init --name NAME`, asserting success.
    pub fn init(&self, name: &str) -> Run {
        self.run(["init", "--name", name]).ok()
    }

    /// `p2pfs id --json`.
    pub fn id(&self) -> IdJson {
        self.run(["id", "--json"]).ok().json()
    }

    /// `vault import PATHS` (relative to `work/`), asserting success.
    pub fn import(&self, paths: &[&str]) -> Run {
        let mut args = vec!["vault", "import"];
        args.extend_from_slice(paths);
        self.run(args).ok()
    }

    /// `vault list --json` (the newest version of each file), asserting
    /// success, sorted by name then id.
    pub fn list(&self) -> Vec<Listed> {
        let mut v: Vec<Listed> = self.run(["vault", "list", "--json"]).ok().json();
        v.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        v
    }

    /// `vault list --all --json` (every version), sorted by name, version.
    pub fn list_all(&self) -> Vec<Listed> {
        let mut v: Vec<Listed> = self.run(["vault", "list", "--all", "--json"]).ok().json();
        v.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        v
    }

    /// The listed entry with this exact name (asserting there is one).
    #[track_caller]
    pub fn entry(&self, name: &str) -> Listed {
        let all = self.list();
        let hits: Vec<_> = all.iter().filter(|e| e.name == name).collect();
        assert_eq!(hits.len(), 1, "expected one {name:?} in {all:#?}");
        hits[0].clone()
    }

    /// Exports `what` to `work/DEST`, asserting success; returns the path.
    pub fn export(&self, what: &str, dest: &str) -> PathBuf {
        self.run(["vault", "export", what, dest]).ok();
        self.path(dest)
    }

    /// The object ids present in `objects/`, by extension.
    pub fn object_files(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(self.objects()) {
            for e in rd {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let (stem, ext) = name.split_once('.').unwrap_or((&name, ""));
                out.entry(ext.to_owned()).or_default().push(stem.to_owned());
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }

    /// Files left in `vault/staging`.
    pub fn staging_files(&self) -> Vec<PathBuf> {
        files_under(&self.vault().join("staging"))
    }

    /// Keeps the temporary directory on disk (for debugging a failure).
    pub fn keep(&mut self) -> PathBuf {
        let tmp = self.tmp.take().unwrap();
        tmp.keep()
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- serving nodes

/// A running `p2pfs serve` on 127.0.0.1 (no mDNS), stopped with SIGTERM
/// when dropped.
pub struct Serving {
    proc: Option<Proc>,
    /// Its UDP port.
    pub port: u16,
}

impl Serving {
    /// The serving process's id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// Starts `serve` for `node` on a free port with `extra` arguments.
    pub fn start(node: &Node, extra: &[&str]) -> Self {
        Self::start_on(node, 0, extra)
    }

    /// Starts `serve` for `node` on 127.0.0.1:`port` (0: a free one).
    pub fn start_on(node: &Node, port: u16, extra: &[&str]) -> Self {
        Self::start_env(node, port, extra, &[])
    }

    /// As [`Serving::start_on`], with environment variables `env` set.
    pub fn start_env(node: &Node, port: u16, extra: &[&str], env: &[(&str, &OsStr)]) -> Self {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--listen", &listen, "--no-mdns"];
        args.extend_from_slice(extra);
        let mut cmd = node.cmd(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let mut p = cmd.spawn();
        assert!(
            p.wait_for_output("(UDP)", Duration::from_secs(20)),
            "serve did not start:\n{}\n{}",
            p.stdout_now(),
            p.stderr_now()
        );
        let out = p.stdout_now();
        let line = out.lines().find(|l| l.contains("listening:")).unwrap();
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self {
            proc: Some(p),
            port,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process (for its output so far, its pid, signals).
    pub fn proc(&self) -> &Proc {
        self.proc.as_ref().unwrap()
    }

    /// Mutable access to the process.
    pub fn proc_mut(&mut self) -> &mut Proc {
        self.proc.as_mut().unwrap()
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        peak_rss(self.proc().pid())
    }

    /// SIGKILL, and the outcome.
    pub fn kill9(mut self) -> Run {
        self.proc.take().unwrap().kill9()
    }

    /// SIGTERM, and the outcome (it must stop within 20 s).
    pub fn stop(self) -> Run {
        self.stop_within(Duration::from_secs(20)).0
    }

    /// SIGTERM, then waits (at most `within`) for it to exit.
    pub fn stop_within(mut self, within: Duration) -> (Run, Duration) {
        let mut p = self.proc.take().unwrap();
        let t = Instant::now();
        p.signal(libc::SIGTERM);
        assert!(
            p.wait_timeout(within).is_some(),
            "serve did not stop within {within:?} of SIGTERM"
        );
        let took = t.elapsed();
        (p.finish(), took)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            if p.wait_timeout(Duration::from_secs(10)).is_none() {
                p.kill9();
            }
        }
    }
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

// ---------------------------------------------------------------- send events

/// Parses NDJSON events printed by `send --json`.
pub fn events(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The first event of kind `kind`.
pub fn event<'a>(evs: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    evs.iter().find(|e| e["event"] == kind)
}

/// Starts `send --json` and waits until it reports `fraction` of `total` sent.
pub fn send_until(a: &Node, what: &str, addr: &str, total: u64, fraction: f64) -> Proc {
    until_progress(
        a.spawn(["send", "--trust-new", "--json", what, addr]),
        total,
        fraction,
    )
}

/// Waits until a transfer started with `--json` (`send`, `get`) reports
/// `fraction` of `total` done, and checks it still runs.
pub fn until_progress(mut p: Proc, total: u64, fraction: f64) -> Proc {
    let target = (total as f64 * fraction) as u64;
    let reached = wait_until(Duration::from_secs(120), || {
        events(&p.stdout_now())
            .iter()
            .any(|e| e["event"] == "progress" && e["bytes_done"].as_u64().unwrap_or(0) >= target)
    });
    assert!(
        reached,
        "the transfer never reached {target} bytes:\n{}\n{}",
        p.stdout_now(),
        p.stderr_now()
    );
    assert!(
        p.try_wait().is_none(),
        "the transfer ended too early:\n{}",
        p.stdout_now()
    );
    p
}

/// Checks a log line written to a pipe: no terminal colour sequence, and
/// an RFC 3339 UTC timestamp first (`2026-12-03T12:55:01.123456Z`).
pub fn assert_plain_log_line(line: &str) {
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a log line written to a pipe: {line:?}"
    );
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let b = stamp.as_bytes();
    assert!(
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && stamp.ends_with('Z')
            && stamp[..4].bytes().all(|c| c.is_ascii_digit()),
        "no timestamp first in a log line: {line:?}"
    );
}

/// Spawns `cmd` (a `pair --json` that shows a code) and waits for its first
/// line; returns the process and that line (`code`, `port`, …).
pub fn start_pairing(cmd: Cmd) -> (Proc, serde_json::Value) {
    let mut p = cmd.spawn();
    assert!(
        p.wait_for_output("\"code\"", Duration::from_secs(20)),
        "pair did not start:\n{}\n{}",
        p.stdout_now(),
        p.stderr_now()
    );
    let first: serde_json::Value =
        serde_json::from_str(p.stdout_now().lines().next().unwrap_or_default())
            .expect("pair --json printed JSON first");
    (p, first)
}
