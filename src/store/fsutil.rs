//! File-system helpers for crash safety and permissions: private files and
//! directories, fsync of files and directories, atomic replace.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::error::{Result, StoreError};

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
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io("cannot create", path, e))
}

/// Opens (creating or truncating) a file for writing with mode 0600.
pub fn create_private(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io("cannot create", path, e))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::io("cannot set permissions on", path, e))?;
    Ok(f)
}

/// Flushes a directory's entries (renames, creations) to disk.
pub fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("cannot sync directory", path, e))
}

/// The parent directory of a path ("." for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` atomically with `bytes` (0600): temporary file, fsync,
/// rename, directory fsync. On failure the old content stays.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let res = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::io("cannot write", &tmp, e))?;
        rename(&tmp, path)?;
        fsync_dir(&parent_of(path))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Renames with a typed error.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| StoreError::io("cannot rename", from, e))
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
    match fs::remove_file(path) {
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
