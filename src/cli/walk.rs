//! Turning command-line paths into named entries: files and empty folders,
//! recursively, relative names kept; symbolic links and special files are
//! skipped (and reported), never followed. Each entry keeps the identity
//! (device, inode) the walk saw, so the file opened later must be that one
//! (`p2pfs::store::fsutil::open_source`).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use p2pfs::{
    store::{format::validate_name, fsutil::FileIdentity},
    text,
};

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

/// What a walk found: the entries to store, and how many paths it left out
/// because the receiver (or the vault) would refuse their names.
pub struct Collected {
    /// Entries to store, in walk order, each name once.
    pub items: Vec<Item>,
    /// Paths left out for their names (one line each was printed).
    pub refused: usize,
}

const NOT_UTF8: &str = "its name is not valid UTF-8";

/// A path for a message: escaped; one that is not UTF-8 with its bytes
/// as `\xNN` (as Rust quotes it), so two such names stay apart.
fn shown_path(p: &Path) -> String {
    match p.to_str() {
        Some(_) => shown(p),
        None => text::escape(&format!("{p:?}")),
    }
}

/// Why a path was left out.
enum Skip {
    /// A symbolic link or special file: never followed (not an error).
    NotFollowed(PathBuf),
    /// A name that cannot be stored: not UTF-8, a control or invisible
    /// character, too long, or the same stored name as an earlier path.
    Name(PathBuf, String),
}

fn name_of(path: &Path) -> Result<Result<String, String>> {
    let base = match path.file_name() {
        Some(b) => PathBuf::from(b),
        None => fs::canonicalize(path)
            .with_context(|| format!("cannot resolve {}", shown(path)))?
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("root")),
    };
    Ok(base
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| NOT_UTF8.to_owned()))
}

fn walk(path: &Path, name: &str, out: &mut Vec<Item>, skipped: &mut Vec<Skip>) -> Result<()> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot read {}", shown(path)))?;
    if meta.file_type().is_symlink() {
        skipped.push(Skip::NotFollowed(path.to_path_buf()));
        return Ok(());
    }
    if let Err(why) = validate_name(name) {
        skipped.push(Skip::Name(path.to_path_buf(), why.to_owned()));
        return Ok(());
    }
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
            match cn.to_str() {
                Some(cn) => walk(&c.path(), &format!("{name}/{cn}"), out, skipped)?,
                None => skipped.push(Skip::Name(c.path(), NOT_UTF8.to_owned())),
            }
        }
    } else {
        skipped.push(Skip::NotFollowed(path.to_path_buf()));
    }
    Ok(())
}

/// Walks every path; prints one line for each path left out. Names the
/// receiver would refuse (`validate_name`, invalid UTF-8, the same stored
/// name twice: the first path keeps it) are found here, before anything is
/// sent: with `strict` any of them fails the whole walk, otherwise they are
/// left out and counted in [`Collected::refused`]. Symbolic links and special
/// files are left out and not counted: they are never followed, by design.
pub fn collect(paths: &[PathBuf], strict: bool) -> Result<Collected> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        match name_of(p)? {
            Ok(name) => walk(p, &name, &mut items, &mut skipped)?,
            Err(why) => skipped.push(Skip::Name(p.clone(), why)),
        }
    }
    let mut first: HashMap<String, PathBuf> = HashMap::with_capacity(items.len());
    let mut kept = Vec::with_capacity(items.len());
    for it in items {
        match first.get(&it.name) {
            Some(p) => skipped.push(Skip::Name(
                it.path,
                format!(
                    "the same stored name \"{}\" as {}",
                    text::escape(&it.name),
                    shown(p)
                ),
            )),
            None => {
                first.insert(it.name.clone(), it.path.clone());
                kept.push(it);
            }
        }
    }
    let mut refused = 0;
    for s in &skipped {
        match s {
            Skip::NotFollowed(p) => eprintln!(
                "p2pfs: skipped {} (symbolic link or special file, not followed)",
                shown(p)
            ),
            Skip::Name(p, why) => {
                refused += 1;
                let verb = if strict { "cannot store" } else { "skipped" };
                eprintln!("p2pfs: {verb} {}: {why}", shown_path(p));
            }
        }
    }
    if strict && refused > 0 {
        bail!("{refused} path(s) cannot be stored under their names (listed above); nothing was sent or stored (--strict)");
    }
    Ok(Collected {
        items: kept,
        refused,
    })
}

/// Why a walk left nothing to store.
pub fn nothing_left(refused: usize) -> String {
    if refused > 0 {
        format!("every path was skipped ({refused} for names that cannot be stored, listed above; symbolic links and special files are never followed)")
    } else {
        "only symbolic links or special files were given (they are never followed)".to_owned()
    }
}

/// The end of a command that stored what it could: success, or the
/// partial-transfer failure (exit code 23) when paths were left out for
/// their names.
pub fn partial(refused: usize, done: &str) -> Result<()> {
    if refused == 0 {
        return Ok(());
    }
    Err(Partial(format!(
        "partial: {refused} path(s) skipped for their names (listed above); everything else was {done}"
    ))
    .into())
}

/// Some paths were left out for their names; the rest was stored.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Partial(pub String);
