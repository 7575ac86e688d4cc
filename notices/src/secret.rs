//! Secrets: SMTP passwords and webhook signing keys.
//!
//! They are looked up at the moment of a delivery and held only as long as
//! it lasts. [`Secret`] prints as `[redacted]`, so no `{:?}` of a struct that
//! carries one can leak it into a log.

use std::fmt;
use std::path::{Path, PathBuf};

/// Bytes that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes as they are.
    pub(crate) fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// Wraps secret bytes, dropping one trailing newline (files written
    /// with `echo` or an editor end with one; nobody means it).
    pub(crate) fn from_file_bytes(mut bytes: Vec<u8>) -> Secret {
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Secret(bytes)
    }

    /// The secret itself, for the one place that needs it.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// What a webhook's `secret_env` resolves to: its secret and, while a
/// rotation is under way, the secret it replaces (from the name with
/// [`PREVIOUS_SUFFIX`] appended).
#[derive(Debug, Clone)]
pub(crate) struct WebhookSecrets {
    /// The secret named by `secret_env`.
    pub(crate) current: Secret,
    /// The secret named `<secret_env>_PREVIOUS`, when set and not empty.
    pub(crate) previous: Option<Secret>,
}

/// Appended to a webhook's `secret_env` to name the secret it replaces
/// during a rotation: both sign each delivery until the old one is removed.
pub(crate) const PREVIOUS_SUFFIX: &str = "_PREVIOUS";

/// Where secrets are looked up: the process environment and the systemd
/// credentials directory.
///
/// The credentials directory is captured once (from `$CREDENTIALS_DIRECTORY`
/// when the dispatcher is built) rather than read on every lookup, so tests
/// and embedders can point it at a directory of their own without touching
/// the process environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecretSource {
    pub(crate) credentials_dir: Option<PathBuf>,
}

impl SecretSource {
    /// The source systemd sets up for a service with `LoadCredential=`.
    pub(crate) fn from_environment() -> SecretSource {
        SecretSource {
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }

    /// Reads the systemd credential `name`.
    pub(crate) async fn credential(&self, name: &str) -> Result<Secret, String> {
        check_credential_name(name)?;
        let Some(dir) = &self.credentials_dir else {
            return Err(format!(
                "credential {name:?} wanted but $CREDENTIALS_DIRECTORY is not set; add `LoadCredential={name}:<file>` to the service unit"
            ));
        };
        read_secret_file(&dir.join(name)).await
    }

    /// Resolves a webhook's `secret_env`: the environment variable of that
    /// name if set, else the systemd credential of that name.
    pub(crate) async fn webhook_secret(&self, name: &str) -> Result<Secret, String> {
        let secret = self.webhook_secret_any(name).await?;
        if secret.expose().is_empty() {
            // Signing with an empty key would look signed and prove nothing (the service unit
            // ships empty placeholder credential files); retry until a real key is set.
            return Err(format!(
                "webhook secret {name:?} is empty; put the key in it, or remove secret_env to send unsigned"
            ));
        }
        Ok(secret)
    }

    /// Resolves a webhook's `secret_env` and, for a rotation, the secret
    /// named `<secret_env>_PREVIOUS`. The previous one is optional: unset or
    /// empty (how a rotation is ended with a credential file) means none.
    pub(crate) async fn webhook_secrets(&self, name: &str) -> Result<WebhookSecrets, String> {
        let current = self.webhook_secret(name).await?;
        let previous_name = format!("{name}{PREVIOUS_SUFFIX}");
        let previous = self
            .find_webhook_secret(&previous_name)
            .await?
            .filter(|previous| !previous.expose().is_empty() && *previous != current);
        Ok(WebhookSecrets { current, previous })
    }

    async fn webhook_secret_any(&self, name: &str) -> Result<Secret, String> {
        self.find_webhook_secret(name).await?.ok_or_else(|| {
            format!(
                "webhook secret {name:?} is neither an environment variable nor a systemd credential; set it, or remove secret_env to send unsigned"
            )
        })
    }

    /// The environment variable `name`, else the systemd credential `name`;
    /// `None` when neither exists, an error when the credential is unreadable.
    async fn find_webhook_secret(&self, name: &str) -> Result<Option<Secret>, String> {
        if let Some(value) = std::env::var_os(name) {
            return Ok(Some(Secret(value.into_encoded_bytes())));
        }
        match &self.credentials_dir {
            Some(dir) if check_credential_name(name).is_ok() && dir.join(name).is_file() => {
                read_secret_file(&dir.join(name)).await.map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// Reads a password or key file.
pub(crate) async fn read_secret_file(path: &Path) -> Result<Secret, String> {
    tokio::fs::read(path)
        .await
        .map(Secret::from_file_bytes)
        .map_err(|err| format!("cannot read secret file {}: {err}", path.display()))
}

/// A credential name is a file name inside the credentials directory; a
/// name with a slash would let a job file read any file the daemon can.
fn check_credential_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a credential name; use a plain file name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_secret() {
        let secret = Secret::from_file_bytes(b"hunter2\n".to_vec());
        assert_eq!(secret.expose(), b"hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn credential_is_read_from_the_credentials_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("smtp-password"), "s3cret\r\n").expect("write credential");
        let source = SecretSource {
            credentials_dir: Some(dir.path().to_path_buf()),
        };
        let secret = source
            .credential("smtp-password")
            .await
            .expect("credential exists");
        assert_eq!(secret.expose(), b"s3cret");
    }

    #[tokio::test]
    async fn credential_names_cannot_leave_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = SecretSource {
            credentials_dir: Some(dir.path().to_path_buf()),
        };
        let err = source
            .credential("../etc/passwd")
            .await
            .expect_err("path must be refused");
        assert!(err.contains("not a credential name"), "{err}");
    }

    #[tokio::test]
    async fn webhook_secret_prefers_the_environment() {
        // PATH is set in every test environment; reading it proves the
        // environment is consulted first without mutating it.
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("PATH"), "from-credential").expect("write credential");
        let source = SecretSource {
            credentials_dir: Some(dir.path().to_path_buf()),
        };
        let expected = std::env::var_os("PATH")
            .expect("PATH is set")
            .into_encoded_bytes();
        let secret = source.webhook_secret("PATH").await.expect("PATH resolves");
        assert_eq!(secret.expose(), expected.as_slice());
    }

    #[tokio::test]
    async fn missing_webhook_secret_says_how_to_fix_it() {
        let source = SecretSource::default();
        let err = source
            .webhook_secret("REELSPOOL_TEST_SECRET_THAT_IS_NOT_SET")
            .await
            .expect_err("nothing provides this secret");
        assert!(err.contains("remove secret_env"), "{err}");
    }

    #[tokio::test]
    async fn previous_secret_is_found_under_the_suffixed_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("rot-hook"), "new-key\n").expect("write credential");
        let source = SecretSource {
            credentials_dir: Some(dir.path().to_path_buf()),
        };
        let alone = source.webhook_secrets("rot-hook").await.expect("resolves");
        assert_eq!(alone.current.expose(), b"new-key");
        assert!(alone.previous.is_none(), "no rotation configured");

        std::fs::write(dir.path().join("rot-hook_PREVIOUS"), "old-key\n").expect("write");
        let rotating = source.webhook_secrets("rot-hook").await.expect("resolves");
        assert_eq!(rotating.current.expose(), b"new-key");
        assert_eq!(
            rotating.previous.as_ref().map(Secret::expose),
            Some(&b"old-key"[..])
        );

        // Emptying the old credential file ends the rotation.
        std::fs::write(dir.path().join("rot-hook_PREVIOUS"), "\n").expect("write");
        let ended = source.webhook_secrets("rot-hook").await.expect("resolves");
        assert!(ended.previous.is_none());
    }

    #[tokio::test]
    async fn empty_webhook_secret_is_refused_not_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("empty-hook-key"), b"\n").expect("write credential");
        let source = SecretSource {
            credentials_dir: Some(dir.path().to_path_buf()),
        };
        let err = source
            .webhook_secret("empty-hook-key")
            .await
            .expect_err("an empty key must not sign");
        assert!(err.contains("empty"), "{err}");
    }
}
