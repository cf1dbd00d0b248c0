//! Turning command-line paths into named entries: files and empty folders,
//! recursively, relative names kept; symbolic links and special files are
//! skipped (and reported), never followed. Each entry keeps the identity
//! (device, inode) the walk saw, so the file opened later must be that one
//! (`p2pfs::store::fsutil::open_source`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use p2pfs::store::{format::validate_name, fsutil::FileIdentity};

pub use p2pfs::store::error::shown;

/// One thing to store: a file or an empty directory, under a vault name.
pub struct Item {
    /// Local path.
    pub path: PathBuf,
    /// Relative `/`-separated name.
    pub name: String,
    /// An empty directory.
    pub dir: bool,
    /// Size in bytes.
    pub size: u64,
    /// Which file the walk saw (`lstat`).
    pub identity: FileIdentity,
}

fn name_of(path: &Path) -> Result<String> {
    let base = match path.file_name() {
        Some(b) => PathBuf::from(b),
        None => fs::canonicalize(path)
            .with_context(|| format!("cannot resolve {}", shown(path)))?
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("root")),
    };
    base.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not valid UTF-8", shown(path)))
}

fn walk(path: &Path, name: &str, out: &mut Vec<Item>, skipped: &mut Vec<PathBuf>) -> Result<()> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot read {}", shown(path)))?;
    if meta.file_type().is_symlink() {
        skipped.push(path.to_path_buf());
        return Ok(());
    }
    validate_name(name).map_err(|why| anyhow::anyhow!("cannot store {}: {why}", shown(path)))?;
    if meta.is_file() {
        out.push(Item {
            path: path.to_path_buf(),
            name: name.to_owned(),
            dir: false,
            size: meta.len(),
            identity: FileIdentity::of(&meta),
        });
    } else if meta.is_dir() {
        let mut children: Vec<_> = fs::read_dir(path)
            .with_context(|| format!("cannot list {}", shown(path)))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list {}", shown(path)))?;
        children.sort_by_key(|e| e.file_name());
        if children.is_empty() {
            out.push(Item {
                path: path.to_path_buf(),
                name: name.to_owned(),
                dir: true,
                size: 0,
                identity: FileIdentity::of(&meta),
            });
        }
        for c in children {
            let cn = c.file_name();
            let cn = cn
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8", shown(&c.path())))?;
            walk(&c.path(), &format!("{name}/{cn}"), out, skipped)?;
        }
    } else {
        skipped.push(path.to_path_buf());
    }
    Ok(())
}

/// Walks every path; prints what was skipped.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        walk(p, &name_of(p)?, &mut items, &mut skipped)?;
    }
    for s in &skipped {
        eprintln!(
            "p2pfs: skipped {} (symbolic link or special file, not followed)",
            shown(s)
        );
    }
    Ok(items)
}
