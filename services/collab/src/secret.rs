//! The token-signing secret: the configured one, or in dev mode one that is
//! generated once and kept in the data dir, so tokens survive restarts and
//! `collab token --data-dir` can mint for a dev server.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::config::CollabConfig;

/// The file in the data dir holding the dev-mode secret.
pub const DEV_SECRET_FILE: &str = "dev-secret";
/// Random bytes in a generated secret (256 bits, as HS256 wants).
const DEV_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the dev secret {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the dev secret {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no secret configured and no dev secret in {0} (start `collab serve` there once, or set --jwt-secret / COLLAB_JWT_SECRET)"
    )]
    NoSecret(PathBuf),
}

/// The secret to sign and verify with, and whether it is a dev secret.
pub struct SigningSecret {
    /// Empty for a server with a JWKS and no secret: it has no HS256 key.
    pub bytes: Vec<u8>,
    pub dev_mode: bool,
}

/// For `collab serve`: the configured secret, else none if a JWKS is
/// configured, else the data dir's dev secret, generated now if there is
/// none yet.
pub fn for_server(config: &CollabConfig) -> Result<SigningSecret, SecretError> {
    match &config.jwt_secret {
        Some(secret) => Ok(SigningSecret {
            bytes: secret.expose().to_vec(),
            dev_mode: false,
        }),
        None if !config.dev_mode() => Ok(SigningSecret {
            bytes: Vec::new(),
            dev_mode: false,
        }),
        None => Ok(SigningSecret {
            bytes: load_or_create_dev_secret(&config.data_dir)?,
            dev_mode: true,
        }),
    }
}

/// For `collab token`: the configured secret, else the data dir's dev
/// secret, which must exist (minting never creates one: a token signed
/// with a secret no server uses would be useless).
pub fn for_minting(config: &CollabConfig) -> Result<SigningSecret, SecretError> {
    match &config.jwt_secret {
        Some(secret) => Ok(SigningSecret {
            bytes: secret.expose().to_vec(),
            dev_mode: false,
        }),
        None => match read_dev_secret(&config.data_dir)? {
            Some(bytes) => Ok(SigningSecret {
                bytes,
                dev_mode: true,
            }),
            None => Err(SecretError::NoSecret(config.data_dir.clone())),
        },
    }
}

/// Reads `dir`/dev-secret; `None` when it does not exist (or is empty: a
/// crash between creating and filling it).
pub fn read_dev_secret(dir: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    let path = dir.join(DEV_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().as_bytes().to_vec())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretError::Read { path, source }),
    }
}

/// Reuses `dir`/dev-secret or generates it: 32 random bytes, hex-encoded
/// (the hex text itself is the key, so the file can be pasted anywhere a
/// secret is asked for). Written to a temporary file and renamed, so a
/// crash never leaves a half-written secret; readable by the owner only.
pub fn load_or_create_dev_secret(dir: &Path) -> Result<Vec<u8>, SecretError> {
    if let Some(secret) = read_dev_secret(dir)? {
        return Ok(secret);
    }
    let path = dir.join(DEV_SECRET_FILE);
    let write_err = |source| SecretError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut bytes = [0u8; DEV_SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();

    let tmp = dir.join(format!("{DEV_SECRET_FILE}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    std::fs::rename(&tmp, &path).map_err(write_err)?;
    Ok(hex.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_secret_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("nested/data");
        assert!(read_dev_secret(&data).expect("reads").is_none());
        let first = load_or_create_dev_secret(&data).expect("creates");
        assert_eq!(first.len(), 2 * DEV_SECRET_BYTES);
        let again = load_or_create_dev_secret(&data).expect("reuses");
        assert_eq!(first, again);
        assert_eq!(read_dev_secret(&data).expect("reads"), Some(first));
        let mode = std::fs::metadata(data.join(DEV_SECRET_FILE))
            .expect("exists")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn minting_needs_a_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = CollabConfig {
            data_dir: dir.path().to_path_buf(),
            ..CollabConfig::default()
        };
        assert!(matches!(
            for_minting(&config),
            Err(SecretError::NoSecret(_))
        ));
        let dev = for_server(&config).expect("generates");
        assert!(dev.dev_mode);
        let minting = for_minting(&config).expect("dev secret exists now");
        assert_eq!(minting.bytes, dev.bytes);
        config.jwt_secret = Some(crate::config::Secret::new("configured"));
        let configured = for_minting(&config).expect("configured");
        assert!(!configured.dev_mode);
        assert_eq!(configured.bytes, b"configured");
    }
}
