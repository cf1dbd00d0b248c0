//! The home directory of a node: where its identity and vault live, and
//! how a node is created (`p2pfs init`).

use std::path::{Path, PathBuf};

use super::{
    error::{Result, StoreError},
    format::{validate_node_name, FormatError, IdentityFile},
    fsutil,
    vault::Vault,
};
use crate::crypto::{
    kdf::KdfParams,
    keys::{Keypair, PublicKey},
};

/// A node's identity: its static X25519 key pair (the Noise static key) and
/// its human-readable name.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The static key pair.
    pub keypair: Keypair,
    /// The node name.
    pub name: String,
}

impl Identity {
    /// The node id (public key).
    pub fn id(&self) -> PublicKey {
        self.keypair.public()
    }
}

/// A home directory (one node).
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home at `root` (not necessarily existing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the identity file.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity")
    }

    /// Path of the vault key pin (beside the identity, outside the vault).
    pub fn pin_path(&self) -> PathBuf {
        self.root.join("vault.pin")
    }

    /// Path of the vault directory.
    pub fn vault_dir(&self) -> PathBuf {
        self.root.join("vault")
    }

    /// True when a node exists here.
    pub fn is_initialised(&self) -> bool {
        self.identity_path().exists()
    }

    /// Creates a node: identity and empty vault. Refuses to overwrite.
    pub fn init(&self, name: &str, passphrase: &[u8], params: KdfParams) -> Result<Identity> {
        validate_node_name(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if self.is_initialised() {
            return Err(StoreError::AlreadyInitialised {
                home: self.root.clone(),
            });
        }
        fsutil::create_private_dir(&self.root)?;
        let vault_dir = self.vault_dir();
        if vault_dir.join("header").exists() {
            // A previous init died before writing the identity (the last
            // step). Only an untouched vault may be replaced.
            if Vault::open(&vault_dir)?.has_objects()? {
                return Err(StoreError::AlreadyInitialised {
                    home: self.root.clone(),
                });
            }
        }
        Vault::create(&vault_dir, passphrase, params)?;
        let keypair = Keypair::generate()?;
        let file = IdentityFile {
            secret: keypair.secret_bytes(),
            name: name.to_owned(),
        };
        fsutil::write_atomic(&self.identity_path(), &file.encode())?;
        // Pins the new vault's key for this node.
        crate::store::pin::Pin {
            generation: 1,
            current: Vault::open(&vault_dir)?.public_key(),
            next: None,
        }
        .save(
            &self.pin_path(),
            &crate::store::pin::PinKey::from_identity(&keypair),
        )?;
        Ok(Identity {
            keypair,
            name: name.to_owned(),
        })
    }

    /// Loads the identity.
    pub fn load_identity(&self) -> Result<Identity> {
        let path = self.identity_path();
        if !path.exists() {
            return Err(StoreError::NotInitialised {
                home: self.root.clone(),
            });
        }
        let bytes = fsutil::read_limited(&path, 4096)?;
        let file = IdentityFile::decode(&bytes).map_err(|e| format_error(&path, e))?;
        Ok(Identity {
            keypair: Keypair::from_secret(file.secret.clone()),
            name: file.name,
        })
    }

    /// Renames the node: the identity file is rewritten atomically with
    /// the same key and the new name (checked as `init` checks it).
    pub fn rename(&self, name: &str) -> Result<()> {
        validate_node_name(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let path = self.identity_path();
        if !path.exists() {
            return Err(StoreError::NotInitialised {
                home: self.root.clone(),
            });
        }
        let bytes = fsutil::read_limited(&path, 4096)?;
        let mut file = IdentityFile::decode(&bytes).map_err(|e| format_error(&path, e))?;
        file.name = name.to_owned();
        fsutil::write_atomic(&path, &file.encode())
    }

    /// Opens the vault, sealing only to vault keys the owner set
    /// (`vault/key.pin`, checked with this node's identity).
    pub fn vault(&self) -> Result<Vault> {
        let identity = self.load_identity()?;
        Vault::open_pinned(&self.vault_dir(), &identity.keypair, self.pin_path())
    }
}

/// Turns a decoding failure of `path` into a store error.
pub fn format_error(path: &Path, e: FormatError) -> StoreError {
    let what = path.display().to_string();
    match e {
        FormatError::Version(version) => StoreError::UnsupportedVersion { what, version },
        other => StoreError::corrupt(what, other.to_string()),
    }
}
