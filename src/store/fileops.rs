//! The one seam every file operation of the store passes through: opening
//! a file to write it, `write`, positioned `pwrite`, `fsync` of a file or a
//! directory, `rename`, `link`, `unlink` and `truncate`. Each function here
//! does the real call and nothing else, so the release build pays nothing.
//!
//! Built with the `faults` feature (the tests' build), every operation is
//! first counted and may be made to fail, the way SQLite's test VFS makes
//! its I/O-error and crash tests exhaustive:
//!
//! - `P2PFS_FAULTS=RULE[,RULE…]`, each rule `KIND:N[+]:ACTION`: the `N`th
//!   operation of `KIND` (`open`, `write`, `fsync`, `dirsync`, `rename`,
//!   `link`, `unlink`, `truncate`, or `any`), counted from 1 in this
//!   process, fails with `ACTION`: `eio`, `enospc`, or `abort` (the process
//!   dies there, before the operation, as a `kill -9` would leave it). With
//!   `+` the rule holds for every operation of that kind from the `N`th on
//!   (a disk that stays full).
//! - `P2PFS_FAULT_TRACE=FILE` appends one line per operation,
//!   `SEQ KIND PATH`, so a test can count a command's operations and then
//!   fail each one in turn.
//!
//! Reads are not on the seam: a failed read is reported like any other
//! error, and it cannot leave anything half-written.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::{fd::AsFd, unix::fs::FileExt},
    path::Path,
};

use rustix::{
    fs::{self as rfs, AtFlags},
    io::Errno,
};

/// The kinds of operations on the seam.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Opening (usually creating) a file for writing.
    Open,
    /// `write` or `pwrite`.
    Write,
    /// `fsync`/`fdatasync` of a file.
    Fsync,
    /// `fsync` of a directory.
    DirSync,
    /// `rename`.
    Rename,
    /// `link` (publishing a file under its name).
    Link,
    /// `unlink`.
    Unlink,
    /// `ftruncate`.
    Truncate,
}

#[cfg(feature = "faults")]
mod inject {
    //! The fault injector of the `faults` build.

    use std::{
        io::{self, Write},
        path::Path,
        sync::{
            atomic::{AtomicU64, Ordering},
            Mutex, OnceLock,
        },
    };

    use super::Op;

    const KINDS: [(&str, Op); 8] = [
        ("open", Op::Open),
        ("write", Op::Write),
        ("fsync", Op::Fsync),
        ("dirsync", Op::DirSync),
        ("rename", Op::Rename),
        ("link", Op::Link),
        ("unlink", Op::Unlink),
        ("truncate", Op::Truncate),
    ];

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Action {
        Eio,
        Enospc,
        Abort,
    }

    struct Rule {
        kind: Option<Op>,
        nth: u64,
        onwards: bool,
        action: Action,
    }

    struct Config {
        rules: Vec<Rule>,
        trace: Option<Mutex<std::fs::File>>,
    }

    static COUNTS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

    fn name(op: Op) -> &'static str {
        KINDS.iter().find(|(_, k)| *k == op).map_or("?", |(n, _)| n)
    }

    fn index(op: Op) -> usize {
        KINDS.iter().position(|(_, k)| *k == op).unwrap_or(0) + 1
    }

    fn parse_rule(s: &str) -> Option<Rule> {
        let mut it = s.trim().split(':');
        let (kind, nth, action) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let kind = match kind {
            "any" => None,
            k => Some(KINDS.iter().find(|(n, _)| *n == k)?.1),
        };
        let (nth, onwards) = match nth.strip_suffix('+') {
            Some(n) => (n, true),
            None => (nth, false),
        };
        let action = match action {
            "eio" => Action::Eio,
            "enospc" => Action::Enospc,
            "abort" => Action::Abort,
            _ => return None,
        };
        Some(Rule {
            kind,
            nth: nth.parse().ok().filter(|n| *n > 0)?,
            onwards,
            action,
        })
    }

    fn config() -> &'static Config {
        static CONFIG: OnceLock<Config> = OnceLock::new();
        CONFIG.get_or_init(|| {
            let rules = std::env::var("P2PFS_FAULTS")
                .unwrap_or_default()
                .split(',')
                .filter(|r| !r.trim().is_empty())
                .map(|r| {
                    parse_rule(r).unwrap_or_else(|| {
                        eprintln!("p2pfs: P2PFS_FAULTS: cannot parse rule {r:?}");
                        std::process::exit(2)
                    })
                })
                .collect();
            let trace = std::env::var_os("P2PFS_FAULT_TRACE").map(|p| {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .unwrap_or_else(|e| {
                        eprintln!("p2pfs: P2PFS_FAULT_TRACE: {e}");
                        std::process::exit(2)
                    });
                Mutex::new(f)
            });
            Config { rules, trace }
        })
    }

    /// Counts `op` on `path`; fails or aborts it when a rule says so.
    pub fn hit(op: Op, path: &Path) -> io::Result<()> {
        let cfg = config();
        let seq = COUNTS[0].fetch_add(1, Ordering::SeqCst) + 1;
        let nth = COUNTS[index(op)].fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(t) = &cfg.trace {
            if let Ok(mut f) = t.lock() {
                let _ = writeln!(f, "{seq} {} {}", name(op), path.display());
            }
        }
        for r in &cfg.rules {
            let n = if r.kind.is_none() { seq } else { nth };
            let due = if r.onwards { n >= r.nth } else { n == r.nth };
            if r.kind.is_some_and(|k| k != op) || !due {
                continue;
            }
            return match r.action {
                Action::Eio => Err(io::Error::from_raw_os_error(libc::EIO)),
                Action::Enospc => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                Action::Abort => {
                    eprintln!(
                        "p2pfs: fault injection: abort at operation {seq} ({} {})",
                        name(op),
                        path.display()
                    );
                    std::process::abort()
                }
            };
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rules_parse_and_bad_ones_do_not() {
            let r = parse_rule("fsync:4:eio").unwrap();
            assert_eq!(
                (r.kind, r.nth, r.onwards, r.action),
                (Some(Op::Fsync), 4, false, Action::Eio)
            );
            let r = parse_rule(" any:12+:enospc").unwrap();
            assert_eq!(
                (r.kind, r.nth, r.onwards, r.action),
                (None, 12, true, Action::Enospc)
            );
            for bad in [
                "fsync:0:eio",
                "fsync:x:eio",
                "sync:1:eio",
                "fsync:1:boom",
                "fsync:1",
                "a:1:eio:x",
            ] {
                assert!(parse_rule(bad).is_none(), "{bad}");
            }
        }
    }
}

/// Counts `op` on `path` and, in the `faults` build, fails or aborts it
/// when `P2PFS_FAULTS` says so. Nothing at all otherwise.
#[inline(always)]
pub fn hit(op: Op, path: &Path) -> io::Result<()> {
    #[cfg(feature = "faults")]
    return inject::hit(op, path);
    #[cfg(not(feature = "faults"))]
    {
        let _ = (op, path);
        Ok(())
    }
}

/// [`hit`] for the `rustix` calls, which report an [`Errno`].
#[inline(always)]
pub fn hit_errno(op: Op, path: &Path) -> Result<(), Errno> {
    hit(op, path).map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
}

/// Opens `path` with `opts` (a file about to be written).
pub fn open(opts: &OpenOptions, path: &Path) -> io::Result<File> {
    hit(Op::Open, path)?;
    opts.open(path)
}

/// `write_all` to `f` (`path` names it).
pub fn write_all(mut f: &File, buf: &[u8], path: &Path) -> io::Result<()> {
    hit(Op::Write, path)?;
    f.write_all(buf)
}

/// Positioned `write_all_at`.
pub fn write_all_at(f: &File, buf: &[u8], offset: u64, path: &Path) -> io::Result<()> {
    hit(Op::Write, path)?;
    f.write_all_at(buf, offset)
}

/// `fsync` of a file, data and metadata.
pub fn sync_all(f: &File, path: &Path) -> io::Result<()> {
    hit(Op::Fsync, path)?;
    f.sync_all()
}

/// `syncfs` of the file system holding `f`: every file's data and
/// metadata written and the device cache flushed (counted as an fsync).
/// It reports a write-back error of the file system only since `f` was
/// opened (Linux 5.8 on), so a caller checks each of its files with
/// [`wait_written`] too.
pub fn syncfs(f: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    hit(Op::Fsync, path)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `f`'s dirty pages and waits for them (`sync_file_range` with
/// `WAIT_BEFORE | WRITE | WAIT_AFTER`), reporting a write-back error of
/// the file seen since its last check (counted as an fsync). Nothing of
/// its metadata is written and no device cache is flushed: after a
/// [`syncfs`], it is the per-file error check that costs no I/O.
pub fn wait_written(f: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    hit(Op::Fsync, path)?;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open descriptor; the range 0, 0 means the whole file.
    if unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fdatasync` of a file.
pub fn sync_data(f: &File, path: &Path) -> io::Result<()> {
    hit(Op::Fsync, path)?;
    f.sync_data()
}

/// `ftruncate`.
pub fn set_len(f: &File, len: u64, path: &Path) -> io::Result<()> {
    hit(Op::Truncate, path)?;
    f.set_len(len)
}

/// `fsync` of the directory `path`.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    hit(Op::DirSync, path)?;
    File::open(path)?.sync_all()
}

/// `fsync` of an open directory (`path` names it).
pub fn sync_dir_fd(fd: impl AsFd, path: &Path) -> Result<(), Errno> {
    hit_errno(Op::DirSync, path)?;
    rfs::fsync(fd)
}

/// `rename`.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    hit(Op::Rename, from)?;
    std::fs::rename(from, to)
}

/// `unlink`.
pub fn remove_file(path: &Path) -> io::Result<()> {
    hit(Op::Unlink, path)?;
    std::fs::remove_file(path)
}

/// `renameat` within one directory (`shown` names the source).
pub fn renameat(
    dir: impl AsFd,
    from: &std::ffi::OsStr,
    to: &std::ffi::OsStr,
    shown: &Path,
) -> Result<(), Errno> {
    hit_errno(Op::Rename, shown)?;
    rfs::renameat(&dir, from, &dir, to)
}

/// `unlinkat` of a file (`shown` names it).
pub fn unlinkat(dir: impl AsFd, name: &std::ffi::OsStr, shown: &Path) -> Result<(), Errno> {
    hit_errno(Op::Unlink, shown)?;
    rfs::unlinkat(dir, name, AtFlags::empty())
}

/// `linkat` (`shown` names the new link).
pub fn linkat(
    old_dir: impl AsFd,
    old: impl rustix::path::Arg,
    new_dir: impl AsFd,
    new: &std::ffi::OsStr,
    flags: AtFlags,
    shown: &Path,
) -> Result<(), Errno> {
    hit_errno(Op::Link, shown)?;
    rfs::linkat(old_dir, old, new_dir, new, flags)
}

/// `openat` of a file about to be written (`shown` names it).
pub fn openat(
    dir: impl AsFd,
    name: impl rustix::path::Arg,
    flags: rfs::OFlags,
    mode: rfs::Mode,
    shown: &Path,
) -> Result<std::os::fd::OwnedFd, Errno> {
    hit_errno(Op::Open, shown)?;
    rfs::openat(dir, name, flags, mode)
}
