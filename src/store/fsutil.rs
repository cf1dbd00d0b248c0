//! File-system helpers for crash safety, permissions and links: private
//! files and directories, fsync of files and directories, atomic replace;
//! opening a source file without following links ([`open_source`]); and
//! writing below a destination directory through descriptors ([`Dir`],
//! [`NewFile`]), so that no symbolic link inside it is written through and
//! an interrupted write leaves no file behind (`docs/VAULT.md`, *Export*).

use std::{
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions},
    io::Write,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        },
    },
    path::{Path, PathBuf},
    sync::OnceLock,
};

use rustix::{
    fs::{self as rfs, AtFlags, Mode, OFlags, CWD},
    io::Errno,
};

use super::{
    error::{Result, StoreError},
    fileops,
};

/// Creates a directory (and parents) with mode 0700 and enforces 0700 on it.
pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| StoreError::io("cannot create directory", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io("cannot set permissions on", path, e))
}

/// Opens a new file for writing with mode 0600, failing if it exists.
pub fn create_new_private(path: &Path) -> Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).read(true).create_new(true).mode(0o600);
    fileops::open(&o, path).map_err(|e| StoreError::io("cannot create", path, e))
}

/// Opens (creating or truncating) a file for writing with mode 0600.
pub fn create_private(path: &Path) -> Result<File> {
    let mut o = OpenOptions::new();
    o.write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(0o600);
    let f = fileops::open(&o, path).map_err(|e| StoreError::io("cannot create", path, e))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::io("cannot set permissions on", path, e))?;
    Ok(f)
}

/// Flushes a directory's entries (renames, creations) to disk.
pub fn fsync_dir(path: &Path) -> Result<()> {
    fileops::sync_dir(path).map_err(|e| StoreError::io("cannot sync directory", path, e))
}

/// The parent directory of a path ("." for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` atomically with `bytes` (0600): temporary file, fsync,
/// rename, directory fsync. The rename is the commit: a failure before it
/// is an error and leaves the old content; once it is done the new content
/// is in place, and a failure of the directory fsync after it is not an
/// error (that would tell the caller the old content stays, which is
/// false) but a warning that the change may not survive a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let res = (|| {
        let f = create_private(&tmp)?;
        fileops::write_all(&f, bytes, &tmp)
            .and_then(|_| fileops::sync_all(&f, &tmp))
            .map_err(|e| StoreError::io("cannot write", &tmp, e))?;
        rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fileops::remove_file(&tmp);
        return res;
    }
    sync_dir_after_commit(&parent_of(path));
    Ok(())
}

/// The directory fsync after a commit that already took effect: a
/// failure is a warning (the change is in place, maybe not yet durable).
pub fn sync_dir_after_commit(dir: &Path) {
    if let Err(e) = fsync_dir(dir) {
        tracing::warn!(
            "{e}: the change is made, but may not survive a power loss until the disk is healthy"
        );
    }
}

/// Renames with a typed error.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fileops::rename(from, to).map_err(|e| StoreError::io("cannot rename", from, e))
}

/// Reads a whole file, refusing files over `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| StoreError::io("cannot read", path, e))?;
    if meta.len() > limit {
        return Err(StoreError::corrupt(
            path.display().to_string(),
            format!("{} bytes, more than the {limit} allowed", meta.len()),
        ));
    }
    fs::read(path).map_err(|e| StoreError::io("cannot read", path, e))
}

/// Removes a file if it exists.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fileops::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("cannot remove", path, e)),
    }
}

/// Asks the kernel to start writing a file's dirty pages now (without
/// waiting), so a later fsync finds little left and the disk works while
/// the CPU does.
pub fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call only schedules I/O. A
    // failure (e.g. an unsupported file system) just leaves it to fsync.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// True when `syncfs` reports write-back errors (Linux 5.8 and later):
/// only then may one `syncfs` stand for the fsyncs of many files.
pub fn syncfs_reports_errors() -> bool {
    static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *YES.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        kernel_at_least(&release, (5, 8))
    })
}

/// Whether a kernel release string (`6.1.0-18-amd64`) is at least `min`.
fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let num = |p: Option<&str>| p.and_then(|s| s.parse::<u32>().ok());
    match (num(parts.next()), num(parts.next())) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// Bytes written between two [`start_writeback`] kicks.
pub const WRITEBACK_BYTES: u64 = 8 << 20;

/// A writer that kicks writeback every [`WRITEBACK_BYTES`].
pub struct WritebackWriter<'a> {
    file: &'a File,
    unflushed: u64,
}

impl<'a> WritebackWriter<'a> {
    /// Wraps a file opened for writing.
    pub fn new(file: &'a File) -> Self {
        Self { file, unflushed: 0 }
    }
}

impl Write for WritebackWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        fileops::hit(fileops::Op::Write, Path::new("(a file being written)"))?;
        let n = (&mut &*self.file).write(buf)?;
        self.unflushed += n as u64;
        if self.unflushed >= WRITEBACK_BYTES {
            self.unflushed = 0;
            start_writeback(self.file);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------- sources

/// Which file a path named when it was looked at (`lstat`): device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileIdentity {
    /// The identity in a file's metadata.
    pub fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// Opens a source file for reading: never through a symbolic link at the
/// last component (`O_NOFOLLOW`), never as a controlling terminal
/// (`O_NOCTTY`), without blocking on a FIFO (`O_NONBLOCK`, cleared once the
/// file is known to be regular). What was opened is then checked on the
/// descriptor (`fstat`): a regular file, and, when `expected` is given, the
/// very file the directory walk saw with `lstat`. So a path swapped for a
/// link, a device or another file between the walk and the open is refused
/// instead of read. Returns the file and its metadata (from the descriptor).
pub fn open_source(path: &Path, expected: Option<FileIdentity>) -> Result<(File, fs::Metadata)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = rfs::open(path, flags | OFlags::CLOEXEC, Mode::empty()).map_err(|e| match e {
        Errno::LOOP => StoreError::NotRegularFile {
            path: path.to_path_buf(),
            what: "a symbolic link",
        },
        e => StoreError::io("cannot open", path, e.into()),
    })?;
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("cannot read", path, e))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::NotRegularFile {
            path: path.to_path_buf(),
            what: "not a regular file",
        });
    }
    if expected.is_some_and(|id| id != FileIdentity::of(&meta)) {
        return Err(StoreError::SourceChanged {
            path: path.to_path_buf(),
        });
    }
    rfs::fcntl_getfl(&file)
        .and_then(|f| rfs::fcntl_setfl(&file, f - OFlags::NONBLOCK))
        .map_err(|e| StoreError::io("cannot open", path, e.into()))?;
    Ok((file, meta))
}

// ---------------------------------------------------------------- destinations

/// The process's file mode creation mask. Read from `/proc/self/status`
/// (`Umask:`, Linux ≥ 4.7) because `umask(2)` can only be read by setting
/// it, which races with other threads creating files. Without `/proc` the
/// strictest mask (077) is assumed: a file is then never made more
/// accessible than the user's umask would allow.
pub fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .map_or(0o077, |m| m & 0o777)
    })
}

/// One path component, as `*at()` calls take it: not empty, `.` or `..`,
/// and without `/`.
fn check_component(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(StoreError::Invalid(format!(
            "{:?} is not a single file name",
            name.to_string_lossy()
        )));
    }
    Ok(())
}

/// An open directory. Everything below it is reached relative to its
/// descriptor, one component at a time and never through a symbolic link,
/// so a link planted (or swapped in) inside the tree cannot redirect a
/// write elsewhere. The directory itself is opened as the user named it,
/// links included: that choice is the user's.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    fn open_flags() -> OFlags {
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
    }

    /// Opens the directory `path` (following links: the user chose it).
    pub fn open(path: &Path) -> Result<Self> {
        let fd = rfs::open(path, Self::open_flags(), Mode::empty())
            .map_err(|e| StoreError::io("cannot open directory", path, e.into()))?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Creates `path` and its missing parents (like `mkdir -p`, as the user
    /// named it), then opens it.
    pub fn create_all(path: &Path) -> Result<Self> {
        fs::create_dir_all(path).map_err(|e| StoreError::io("cannot create directory", path, e))?;
        Self::open(path)
    }

    /// The path this directory was reached by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside this directory (for messages).
    pub fn shown(&self, name: &OsStr) -> PathBuf {
        if self.path == Path::new(".") {
            PathBuf::from(name)
        } else {
            self.path.join(name)
        }
    }

    /// The subdirectory `name`, created (mode 0777 less the umask, as
    /// `mkdir` makes it) if missing. A symbolic link there is refused
    /// ([`StoreError::DestinationLink`]), never followed.
    pub fn child_dir(&self, name: &OsStr) -> Result<Dir> {
        check_component(name)?;
        let path = self.shown(name);
        let created = match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o777)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(StoreError::io("cannot create directory", &path, e.into())),
        };
        let fd = rfs::openat(
            &self.fd,
            name,
            Self::open_flags() | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| {
            // O_NOFOLLOW with O_DIRECTORY reports a link as ENOTDIR.
            if self.is_symlink(name) {
                StoreError::DestinationLink { path: path.clone() }
            } else {
                StoreError::io("cannot open directory", &path, e.into())
            }
        })?;
        if created {
            self.sync()?;
        }
        Ok(Dir { fd, path })
    }

    fn file_type(&self, name: &OsStr) -> Option<rfs::FileType> {
        rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| rfs::FileType::from_raw_mode(st.st_mode))
    }

    fn is_symlink(&self, name: &OsStr) -> bool {
        self.file_type(name) == Some(rfs::FileType::Symlink)
    }

    /// True when something (of any type, a link included) is named `name`.
    pub fn contains(&self, name: &OsStr) -> Result<bool> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(StoreError::io("cannot look at", self.shown(name), e.into())),
        }
    }

    /// Flushes the directory's entries to disk.
    pub fn sync(&self) -> Result<()> {
        fileops::sync_dir_fd(&self.fd, &self.path)
            .map_err(|e| StoreError::io("cannot sync directory", &self.path, e.into()))
    }

    /// Removes leftovers of interrupted writes of `name` (named temporary
    /// files of [`NewFile`], from a kill or a crash), so decrypted data that
    /// a dead export left behind does not pile up.
    pub fn remove_stale_temps(&self, name: &OsStr) -> Result<usize> {
        let prefix = temp_prefix(name);
        let rd = rfs::Dir::read_from(&self.fd)
            .map_err(|e| StoreError::io("cannot list", &self.path, e.into()))?;
        let mut removed = 0;
        for entry in rd {
            let entry = entry.map_err(|e| StoreError::io("cannot list", &self.path, e.into()))?;
            let n = entry.file_name().to_bytes();
            let stale = n
                .strip_prefix(prefix.as_slice())
                .and_then(|r| r.strip_suffix(b".tmp"))
                .is_some_and(|r| r.len() == TEMP_HEX && r.iter().all(u8::is_ascii_hexdigit));
            if !stale {
                continue;
            }
            let n = OsStr::from_bytes(n);
            // Only regular files: never a directory or a link of that name.
            if self.file_type(n) == Some(rfs::FileType::RegularFile) {
                match fileops::unlinkat(&self.fd, n, &self.shown(n)) {
                    Ok(()) | Err(Errno::NOENT) => removed += 1,
                    Err(e) => return Err(StoreError::io("cannot remove", self.shown(n), e.into())),
                }
            }
        }
        Ok(removed)
    }
}

/// Hex digits of the random part of a temporary name.
const TEMP_HEX: usize = 12;
/// Bytes of the destination name kept in a temporary name (NAME_MAX is 255).
const TEMP_NAME_KEEP: usize = 200;

/// `.NAME.p2pfs-`, NAME cut so the whole temporary name fits in 255 bytes.
fn temp_prefix(name: &OsStr) -> Vec<u8> {
    let b = name.as_bytes();
    let mut v = b".".to_vec();
    v.extend_from_slice(&b[..b.len().min(TEMP_NAME_KEEP)]);
    v.extend_from_slice(b".p2pfs-");
    v
}

/// A fresh temporary name for `name`: `.NAME.p2pfs-<12 hex>.tmp`.
fn temp_name(name: &OsStr) -> Result<OsString> {
    let mut v = temp_prefix(name);
    v.extend_from_slice(
        crate::crypto::to_hex(&crate::crypto::random::<{ TEMP_HEX / 2 }>()?).as_bytes(),
    );
    v.extend_from_slice(b".tmp");
    Ok(OsString::from_vec(v))
}

/// A file being written into a [`Dir`] under `name`, invisible until
/// [`NewFile::publish`]. It is an unnamed file (`O_TMPFILE`) where the file
/// system has them: a kill at any moment before publication leaves nothing,
/// not even a hidden file. Elsewhere it is a named temporary file
/// `.NAME.p2pfs-<hex>.tmp` (0600), removed on error and on drop, and, as a
/// kill cannot remove it, removed by the next write of the same name.
/// `D` is how it holds its directory: borrowed (`&Dir`), or owned by a
/// file that is written over a long time (`Dir`).
pub struct NewFile<D: std::ops::Deref<Target = Dir>> {
    dir: D,
    name: OsString,
    file: File,
    /// The temporary name while the file has one.
    temp: Option<OsString>,
}

impl<D: std::ops::Deref<Target = Dir>> NewFile<D> {
    /// Starts a new file `name` in `dir` (mode 0600 until the caller sets
    /// the final one).
    pub fn create(dir: D, name: &OsStr) -> Result<Self> {
        check_component(name)?;
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        match fileops::openat(
            &dir.fd,
            ".",
            flags,
            Mode::from_raw_mode(0o600),
            &dir.shown(name),
        ) {
            // Publishing links /proc/self/fd/N; without /proc, use a name.
            Ok(fd) if rfs::statat(CWD, proc_fd(&fd), AtFlags::empty()).is_ok() => {
                return Ok(Self {
                    dir,
                    name: name.to_owned(),
                    file: File::from(fd),
                    temp: None,
                })
            }
            Ok(_) => {}
            // No O_TMPFILE here: EOPNOTSUPP (the file system), EISDIR (an
            // old kernel, which sees only O_DIRECTORY), EINVAL.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
            Err(e) => return Err(StoreError::io("cannot create", dir.shown(name), e.into())),
        }
        Self::create_named(dir, name)
    }

    /// The named fallback of [`NewFile::create`].
    pub fn create_named(dir: D, name: &OsStr) -> Result<Self> {
        check_component(name)?;
        dir.remove_stale_temps(name)?;
        let temp = temp_name(name)?;
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = fileops::openat(
            &dir.fd,
            &temp,
            flags,
            Mode::from_raw_mode(0o600),
            &dir.shown(&temp),
        )
        .map_err(|e| StoreError::io("cannot create", dir.shown(&temp), e.into()))?;
        Ok(Self {
            dir,
            name: name.to_owned(),
            file: File::from(fd),
            temp: Some(temp),
        })
    }

    /// The file to write to.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// True while the file has a (temporary) name.
    pub fn is_named(&self) -> bool {
        self.temp.is_some()
    }

    /// Gives the file its name and syncs the directory. Without `force` an
    /// existing entry of that name (a link included) is never replaced:
    /// [`StoreError::DestinationExists`]. With `force` the file replaces it
    /// atomically (`renameat`), a link being replaced, not written through.
    /// The caller syncs the file first.
    pub fn publish(mut self, force: bool) -> Result<()> {
        let dest = self.dir.shown(&self.name);
        let exists = || StoreError::DestinationExists { path: dest.clone() };
        match (self.temp.clone(), force) {
            (None, false) => self.link_unnamed(&self.name).map_err(|e| match e {
                Errno::EXIST => exists(),
                e => StoreError::io("cannot create", &dest, e.into()),
            })?,
            (None, true) => {
                // An unnamed file cannot be renamed over a name: link it to
                // a temporary name, then rename that at once. Only a kill
                // between the two leaves it, for the next write to remove.
                self.dir.remove_stale_temps(&self.name)?;
                let temp = temp_name(&self.name)?;
                self.link_unnamed(&temp).map_err(|e| {
                    StoreError::io("cannot create", self.dir.shown(&temp), e.into())
                })?;
                self.temp = Some(temp.clone());
                self.rename_temp(&temp, &dest)?;
            }
            (Some(temp), true) => self.rename_temp(&temp, &dest)?,
            (Some(temp), false) => match fileops::linkat(
                &self.dir.fd,
                &temp,
                &self.dir.fd,
                &self.name,
                AtFlags::empty(),
                &dest,
            ) {
                Ok(()) => {}
                Err(Errno::EXIST) => return Err(exists()),
                // File systems without hard links (FAT, exFAT): check, then
                // rename; the window between the two is tiny.
                Err(_) if !self.dir.contains(&self.name)? => self.rename_temp(&temp, &dest)?,
                Err(e) => return Err(StoreError::io("cannot create", &dest, e.into())),
            },
        }
        // A temporary name still there (link, then unlink) goes first.
        let _ = self.unlink_temp();
        self.dir.sync()
    }

    fn link_unnamed(&self, to: &OsStr) -> std::result::Result<(), Errno> {
        // linkat(AT_EMPTY_PATH) would need CAP_DAC_READ_SEARCH; the
        // /proc/self/fd link is the way open(2) documents for everyone.
        fileops::linkat(
            CWD,
            proc_fd(&self.file),
            &self.dir.fd,
            to,
            AtFlags::SYMLINK_FOLLOW,
            &self.dir.shown(to),
        )
    }

    fn rename_temp(&mut self, temp: &OsStr, dest: &Path) -> Result<()> {
        fileops::renameat(&self.dir.fd, temp, &self.name, dest)
            .map_err(|e| StoreError::io("cannot rename to", dest, e.into()))?;
        self.temp = None;
        Ok(())
    }

    fn unlink_temp(&mut self) -> Option<()> {
        let temp = self.temp.take()?;
        fileops::unlinkat(&self.dir.fd, &temp, &self.dir.shown(&temp)).ok()
    }
}

impl<D: std::ops::Deref<Target = Dir>> Drop for NewFile<D> {
    fn drop(&mut self) {
        let _ = self.unlink_temp();
    }
}

/// `/proc/self/fd/N` of a descriptor.
fn proc_fd(fd: &impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

/// Opens (creating, 0600) and exclusively locks (`flock`) the lock file
/// of a small state file, for one read-modify-write; unlocked on drop.
pub fn lock_exclusive(lock_path: &Path) -> Result<File> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path)
        .map_err(|e| StoreError::io("cannot open", lock_path, e))?;
    lock.lock()
        .map_err(|e| StoreError::io("cannot lock", lock_path, e))?;
    Ok(lock)
}

/// Reads a cache file of at most `limit` bytes with `decode`: empty when
/// absent; when damaged, empty too, with a warning that `lost` (what
/// starting afresh costs). Only a failure to read is an error.
pub fn read_cache<T, E: std::fmt::Display>(
    path: &Path,
    limit: u64,
    decode: impl FnOnce(&[u8]) -> std::result::Result<Vec<T>, E>,
    lost: &str,
) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = read_limited(path, limit)?;
    Ok(decode(&bytes).unwrap_or_else(|e| {
        tracing::warn!("{} is damaged ({e}); {lost}", super::error::shown(path));
        Vec::new()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_to(nf: &NewFile<&Dir>, data: &[u8]) {
        let mut f = nf.file();
        f.write_all(data).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn open_source_refuses_a_file_swapped_for_a_symlink_after_the_walk() {
        let d = tempfile::tempdir().unwrap();
        let (src, private) = (d.path().join("src"), d.path().join("private"));
        fs::write(&src, b"public").unwrap();
        fs::write(&private, b"someone's secret").unwrap();
        let seen = FileIdentity::of(&fs::symlink_metadata(&src).unwrap());
        let (_, m) = open_source(&src, Some(seen)).unwrap();
        assert_eq!(m.len(), 6);

        // The walk saw a regular file; now a link to another file is there.
        // (The walked file is kept aside, so its inode cannot be reused.)
        fs::rename(&src, d.path().join("walked")).unwrap();
        std::os::unix::fs::symlink(&private, &src).unwrap();
        for expected in [Some(seen), None] {
            let err = open_source(&src, expected).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::NotRegularFile {
                        what: "a symbolic link",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }

        // Another regular file renamed into place: not the one walked.
        fs::remove_file(&src).unwrap();
        fs::write(d.path().join("other"), b"other").unwrap();
        fs::rename(d.path().join("other"), &src).unwrap();
        let err = open_source(&src, Some(seen)).unwrap_err();
        assert!(matches!(err, StoreError::SourceChanged { .. }), "{err}");
    }

    #[test]
    fn open_source_refuses_a_fifo_without_blocking_and_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; mkfifo has no other precondition.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A blocking open would wait here for a writer forever.
        for p in [fifo.as_path(), d.path()] {
            let err = open_source(p, None).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::NotRegularFile {
                        what: "not a regular file",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn child_dir_refuses_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let (root, elsewhere) = (d.path().join("root"), d.path().join("elsewhere"));
        fs::create_dir_all(&elsewhere).unwrap();
        let dir = Dir::create_all(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("sub")).unwrap();
        let err = dir.child_dir(OsStr::new("sub")).err().unwrap();
        assert!(matches!(err, StoreError::DestinationLink { .. }), "{err}");
        // A real directory is created once and found again.
        let a = dir.child_dir(OsStr::new("a")).unwrap();
        dir.child_dir(OsStr::new("a")).unwrap();
        assert_eq!(a.path(), root.join("a"));
        for bad in ["", ".", "..", "a/b"] {
            assert!(dir.child_dir(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_new_file_is_invisible_until_published_and_gone_if_dropped() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        for named in [false, true] {
            let name = OsStr::new(if named { "n.bin" } else { "u.bin" });
            let nf = if named {
                NewFile::create_named(&dir, name).unwrap()
            } else {
                NewFile::create(&dir, name).unwrap()
            };
            assert_eq!(nf.is_named(), named, "this file system lacks O_TMPFILE");
            write_to(&nf, b"partial plaintext");
            drop(nf);
            assert!(names(d.path()).is_empty(), "{:?}", names(d.path()));

            let nf = NewFile::create(&dir, name).unwrap();
            write_to(&nf, b"one");
            nf.publish(false).unwrap();
            assert_eq!(fs::read(d.path().join(name)).unwrap(), b"one");
            // No overwrite without force, even of a link; with it, replaced.
            let nf = NewFile::create(&dir, name).unwrap();
            write_to(&nf, b"two");
            let err = nf.publish(false).unwrap_err();
            assert!(matches!(err, StoreError::DestinationExists { .. }), "{err}");
            let nf = NewFile::create(&dir, name).unwrap();
            write_to(&nf, b"two");
            nf.publish(true).unwrap();
            assert_eq!(fs::read(d.path().join(name)).unwrap(), b"two");
            fs::remove_file(d.path().join(name)).unwrap();
            assert!(names(d.path()).is_empty(), "{:?}", names(d.path()));
        }
        let target = d.path().join("target");
        fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("link")).unwrap();
        let nf = NewFile::create(&dir, OsStr::new("link")).unwrap();
        assert!(matches!(
            nf.publish(false),
            Err(StoreError::DestinationExists { .. })
        ));
        let nf = NewFile::create(&dir, OsStr::new("link")).unwrap();
        write_to(&nf, b"new");
        nf.publish(true).unwrap();
        assert_eq!(
            fs::read(&target).unwrap(),
            b"keep",
            "written through the link"
        );
        assert!(fs::symlink_metadata(d.path().join("link"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn stale_named_temporaries_of_the_same_name_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        let stale = [
            ".big.out.p2pfs-0123456789ab.tmp",
            ".big.out.p2pfs-ffffffffffff.tmp",
        ];
        // Not leftovers of `big.out`: kept.
        let keep = [
            ".other.p2pfs-0123456789ab.tmp",
            ".big.out.p2pfs-0123.tmp",
            "big.out.p2pfs-0123456789ab.tmp",
            ".big.out.p2pfs-0123456789ab.tmp.x",
        ];
        for n in stale.iter().chain(&keep) {
            fs::write(d.path().join(n), b"decrypted data").unwrap();
        }
        fs::create_dir(d.path().join(".big.out.p2pfs-aaaaaaaaaaaa.tmp")).unwrap();
        let nf = NewFile::create_named(&dir, OsStr::new("big.out")).unwrap();
        let now = names(d.path());
        assert!(now.iter().all(|n| !stale.contains(&n.as_str())), "{now:?}");
        // What is kept, the directory, and the new temporary file.
        assert_eq!(now.len(), keep.len() + 2, "{now:?}");
        drop(nf);
        let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        want.push(".big.out.p2pfs-aaaaaaaaaaaa.tmp".into());
        want.sort();
        assert_eq!(names(d.path()), want);
        // A long name still gives a temporary name that fits.
        let long = "x".repeat(255);
        let nf = NewFile::create_named(&dir, OsStr::new(&long)).unwrap();
        write_to(&nf, b"x");
        nf.publish(false).unwrap();
        assert!(d.path().join(&long).is_file());
    }
}
