//! Registry credentials: given by the caller, or read from the file Docker users already
//! have, `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), whose
//! `auths` map a registry to base64 `user:password` (or `username`/`password` fields).
//!
//! Credential helpers (`credsStore`, `credHelpers`) are programs: this crate spawns none,
//! so entries that only name a helper are skipped (with a log line), as are identity
//! (OAuth refresh) tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{DOCKER_HUB, DOCKER_HUB_ENDPOINT};

/// A username and password for a registry (basic auth, or to obtain a bearer token).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a Docker config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading the Docker config {path} failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the Docker config {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the Docker config {path}: the auth of {registry:?} is not base64 \"user:password\"")]
    BadAuth { path: PathBuf, registry: String },
}

#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize, Default)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The `auths` of a Docker config file, by registry host.
#[derive(Debug, Default, Clone)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
}

impl DockerConfig {
    /// Where Docker keeps it: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
    }

    /// Reads the file at [`DockerConfig::default_path`]; a missing file is an empty config.
    pub fn load_default() -> Result<DockerConfig, AuthError> {
        match Self::default_path() {
            Some(path) => Self::load(&path),
            None => Ok(DockerConfig::default()),
        }
    }

    /// Reads a config file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig, AuthError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DockerConfig::default());
            }
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    fn parse(text: &[u8], path: &Path) -> Result<DockerConfig, AuthError> {
        let file: File = serde_json::from_slice(text).map_err(|source| AuthError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut auths = BTreeMap::new();
        for (key, entry) in file.auths {
            let credentials = match (&entry.auth, &entry.username, &entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    decode(auth).ok_or_else(|| AuthError::BadAuth {
                        path: path.to_owned(),
                        registry: key.clone(),
                    })?
                }
                (_, Some(username), Some(password)) => Credentials {
                    username: username.clone(),
                    password: password.clone(),
                },
                _ => {
                    if entry.identitytoken.is_some() {
                        tracing::info!(
                            registry = key.as_str(),
                            "skipping an identity token in the Docker config: only user:password auths are supported"
                        );
                    }
                    continue;
                }
            };
            auths.insert(normalize_key(&key), credentials);
        }
        Ok(DockerConfig { auths })
    }

    /// Credentials for a registry domain as written in references (`docker.io`,
    /// `host:port`). Docker Hub's entry is found under any of its names.
    pub fn credentials_for(&self, domain: &str) -> Option<Credentials> {
        let names: &[&str] = if domain == DOCKER_HUB {
            &["index.docker.io", DOCKER_HUB, DOCKER_HUB_ENDPOINT]
        } else {
            &[domain]
        };
        names
            .iter()
            .find_map(|name| self.auths.get(&name.to_ascii_lowercase()).cloned())
    }
}

/// `https://index.docker.io/v1/` -> `index.docker.io`; `http://h:5000` -> `h:5000`.
fn normalize_key(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

fn decode(auth: &str) -> Option<Credentials> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_are_found_by_registry_and_docker_hub_alias() {
        let text = br#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "127.0.0.1:5000": {"auth": "dTpwOnc="},
                "http://reg.lan:5000/v2/": {"username": "a", "password": "b"},
                "helper.lan": {}
            },
            "credsStore": "desktop"
        }"#;
        let config = DockerConfig::parse(text, Path::new("config.json")).unwrap();
        let hub = config.credentials_for("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "secret")
        );
        // Only the first ':' separates user from password.
        let local = config.credentials_for("127.0.0.1:5000").unwrap();
        assert_eq!(
            (local.username.as_str(), local.password.as_str()),
            ("u", "p:w")
        );
        assert_eq!(
            config.credentials_for("reg.lan:5000").unwrap().username,
            "a"
        );
        assert!(config.credentials_for("helper.lan").is_none());
        assert!(config.credentials_for("quay.io").is_none());
        assert!(!format!("{hub:?}").contains("secret"));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = DockerConfig::parse(b"{", Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("c.json"), "{err}");
        let err = DockerConfig::parse(br#"{"auths": {"r": {"auth": "!!"}}}"#, Path::new("c.json"))
            .unwrap_err();
        assert!(matches!(err, AuthError::BadAuth { .. }), "{err}");
        assert!(
            DockerConfig::load(Path::new("/nonexistent/config.json"))
                .unwrap()
                .credentials_for("docker.io")
                .is_none()
        );
    }
}
