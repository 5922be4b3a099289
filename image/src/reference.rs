//! Image references, parsed and normalized by Docker's rules.
//!
//! `busybox` is `docker.io/library/busybox:latest`; `me/tool:1.0` is `docker.io/me/tool:1.0`;
//! a first component holding `.` or `:`, equal to `localhost`, or with uppercase letters
//! names a registry (`localhost:5000/x`, `127.0.0.1:5000/a/b:t`).

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// Why a string is not a valid image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error(
        "invalid reference: the name is empty; give a name like \"busybox\" or \"me/tool:1.0\""
    )]
    Empty,
    #[error(
        "invalid repository name {0:?}: a 64-character hex string is an image id, not a name; \
         use \"sha256:<id>\" to refer to an image by id"
    )]
    HexIdentifier(String),
    #[error("invalid reference {input:?}: repository name {path:?} must be lowercase")]
    Uppercase { input: String, path: String },
    #[error("invalid reference {input:?}: {domain:?} is not a valid registry host[:port]")]
    InvalidDomain { input: String, domain: String },
    #[error(
        "invalid reference {input:?}: path component {component:?} must be lowercase letters and \
         digits, separated by '.', '_', '__' or dashes"
    )]
    InvalidPathComponent { input: String, component: String },
    #[error(
        "invalid reference {input:?}: tag {tag:?} must start with a letter, digit or '_' and \
         contain at most 128 letters, digits, '_', '.' or '-'"
    )]
    InvalidTag { input: String, tag: String },
    #[error("invalid reference {input:?}: {source}")]
    InvalidDigest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error("invalid reference {input:?}: repository name must not be more than 255 characters")]
    NameTooLong { input: String },
}

/// A normalized image reference: registry domain, repository path, and a tag and/or digest.
///
/// A reference parsed without tag or digest gets the tag `latest`, as Docker does.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Registry domain, e.g. `docker.io` or `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Repository path inside the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository with `tag` (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !is_valid_tag(tag) {
            return Err(ReferenceError::InvalidTag {
                input: format!("{}:{tag}", self.repository()),
                tag: tag.to_owned(),
            });
        }
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// The short form Docker prints: `busybox:latest`, `me/tool:1.0`, `localhost:5000/x:1`.
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_name();
        self.push_suffix(&mut out);
        out
    }

    /// The repository in short form, without tag or digest: `busybox`, `me/tool`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_owned(),
                // `docker.io/0.0/a` shortened to `0.0/a` would name the registry `0.0`:
                // a first component that reads as a domain keeps the domain in front.
                _ if self
                    .path
                    .split_once('/')
                    .is_some_and(|(first, _)| looks_like_domain(first)) =>
                {
                    self.repository()
                }
                _ => self.path.clone(),
            }
        } else {
            self.repository()
        }
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.repository();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Reference, ReferenceError> {
        parse(input)
    }
}

/// Docker's tag grammar: `[\w][\w.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.split_first() {
        Some((&first, rest)) => {
            word(first)
                && bytes.len() <= TAG_LENGTH_MAX
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    }
}

fn parse(input: &str) -> Result<Reference, ReferenceError> {
    if input.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if crate::digest::is_sha256_hex(input) {
        return Err(ReferenceError::HexIdentifier(input.to_owned()));
    }
    let (name_and_tag, digest) = match input.split_once('@') {
        Some((name, digest)) => {
            let digest =
                digest
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::InvalidDigest {
                        input: input.to_owned(),
                        source,
                    })?;
            (name, Some(digest))
        }
        None => (input, None),
    };
    // A ':' after the last '/' starts the tag; an earlier one is a registry port.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
        }
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag
        && !is_valid_tag(tag)
    {
        return Err(ReferenceError::InvalidTag {
            input: input.to_owned(),
            tag: tag.to_owned(),
        });
    }
    if name.is_empty() {
        return Err(ReferenceError::Empty);
    }

    let (mut domain, mut path) = split_domain(name);
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN;
    }
    let path_owned;
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path_owned = format!("{OFFICIAL_REPO_PREFIX}{path}");
        path = &path_owned;
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase {
            input: input.to_owned(),
            path: path.to_owned(),
        });
    }
    if !is_valid_domain(domain) {
        return Err(ReferenceError::InvalidDomain {
            input: input.to_owned(),
            domain: domain.to_owned(),
        });
    }
    for component in path.split('/') {
        if !is_valid_path_component(component) {
            return Err(ReferenceError::InvalidPathComponent {
                input: input.to_owned(),
                component: component.to_owned(),
            });
        }
    }
    if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong {
            input: input.to_owned(),
        });
    }
    let tag = match (tag, &digest) {
        (Some(tag), _) => Some(tag.to_owned()),
        (None, None) => Some(DEFAULT_TAG.to_owned()),
        (None, Some(_)) => None,
    };
    Ok(Reference {
        domain: domain.to_owned(),
        path: path.to_owned(),
        tag,
        digest,
    })
}

/// Docker's rule: the first component is a registry only if it looks like a host.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest)) if looks_like_domain(first) => (first, rest),
        _ => (DEFAULT_DOMAIN, name),
    }
}

fn looks_like_domain(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // Bracketed IPv6 literal, optionally followed by ":port".
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if host.is_empty() {
        // Only reached for an IPv6 literal with a port, already checked.
        return domain.starts_with('[');
    }
    host.split('.').all(|label| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            }
            _ => false,
        }
    })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_valid_path_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|b| alnum(b)).count();
        if run > 0 {
            i += run;
            expect_alnum = false;
            continue;
        }
        if expect_alnum {
            return false;
        }
        let sep = bytes[i..].iter().take_while(|b| !alnum(b)).count();
        let separator = &bytes[i..i + sep];
        let ok = matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|b| *b == b'-');
        if !ok {
            return false;
        }
        i += sep;
        expect_alnum = true;
    }
    !bytes.is_empty() && !expect_alnum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        s.parse::<Reference>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_are_normalized() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("me/tool:1.0"), "docker.io/me/tool:1.0");
        assert_eq!(full("me/sub/tool"), "docker.io/me/sub/tool:latest");
        assert_eq!(
            full("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(full("index.docker.io/me/x"), "docker.io/me/x:latest");
    }

    #[test]
    fn registry_domains_are_recognized() {
        assert_eq!(full("localhost/x"), "localhost/x:latest");
        assert_eq!(full("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(full("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000/a/b:t");
        assert_eq!(full("quay.io/coreos/etcd:v3.5"), "quay.io/coreos/etcd:v3.5");
        assert_eq!(full("[::1]:5000/x:1"), "[::1]:5000/x:1");
        assert_eq!(full("Registry/x"), "Registry/x:latest");
        // No slash: "localhost:5000" is the image "localhost" with tag "5000", as in Docker.
        assert_eq!(full("localhost:5000"), "docker.io/library/localhost:5000");
        // "me" has no dot, colon or uppercase: a Docker Hub user, not a registry.
        let r: Reference = "me/tool".parse().unwrap();
        assert_eq!(r.domain(), "docker.io");
        assert_eq!(r.path(), "me/tool");
        assert_eq!(r.repository(), "docker.io/me/tool");
    }

    #[test]
    fn digests_and_tags() {
        let r: Reference = format!("x@sha256:{HEX}").parse().unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.hex()), Some(HEX));
        assert_eq!(r.to_string(), format!("docker.io/library/x@sha256:{HEX}"));
        let r: Reference = format!("x:1@sha256:{HEX}").parse().unwrap();
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.to_string(), format!("docker.io/library/x:1@sha256:{HEX}"));
        assert_eq!(full("x:_a.b-C"), "docker.io/library/x:_a.b-C");
        assert_eq!(full(&format!("x:{}", "a".repeat(128))).len(), 20 + 128);
    }

    #[test]
    fn familiar_forms() {
        let f = |s: &str| s.parse::<Reference>().unwrap().familiar();
        assert_eq!(f("docker.io/library/busybox:latest"), "busybox:latest");
        assert_eq!(f("me/tool:1.0"), "me/tool:1.0");
        assert_eq!(f("docker.io/library/a/b"), "library/a/b:latest");
        assert_eq!(f("localhost:5000/x:1"), "localhost:5000/x:1");
        // Shortened, these would name another registry (found by tests/fuzz.rs).
        assert_eq!(f("docker.io/0.0/a"), "docker.io/0.0/a:latest");
        assert_eq!(f("docker.io/localhost/a:1"), "docker.io/localhost/a:1");
        assert_eq!(
            f(&format!("busybox@sha256:{HEX}")),
            format!("busybox@sha256:{HEX}")
        );
    }

    #[test]
    fn path_component_separators() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a.b_c-d", "0x"] {
            assert!(is_valid_path_component(ok), "{ok}");
        }
        for bad in [
            "", "a.", ".a", "a..b", "a___b", "a._b", "-a", "a-", "a b", "A",
        ] {
            assert!(!is_valid_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_inputs_give_clear_errors() {
        let err = |s: &str| s.parse::<Reference>().unwrap_err();
        assert_eq!(err(""), ReferenceError::Empty);
        assert_eq!(err(":tag"), ReferenceError::Empty);
        assert!(matches!(err("Busybox"), ReferenceError::Uppercase { .. }));
        assert!(matches!(err("me/Tool"), ReferenceError::Uppercase { .. }));
        assert!(matches!(
            err("localhost:5000/Tool"),
            ReferenceError::Uppercase { .. }
        ));
        assert!(matches!(err(HEX), ReferenceError::HexIdentifier(_)));
        assert!(matches!(err("x:"), ReferenceError::InvalidTag { .. }));
        assert!(matches!(err("x:-a"), ReferenceError::InvalidTag { .. }));
        assert!(matches!(err("x:a/b"), ReferenceError::InvalidDomain { .. }));
        assert!(matches!(
            err(&format!("x:{}", "a".repeat(129))),
            ReferenceError::InvalidTag { .. }
        ));
        assert!(matches!(
            err("x@sha256:abc"),
            ReferenceError::InvalidDigest { .. }
        ));
        assert!(matches!(
            err(&format!("x@md5:{HEX}")),
            ReferenceError::InvalidDigest {
                source: DigestError::UnsupportedAlgorithm(_),
                ..
            }
        ));
        assert!(matches!(
            err("a//b"),
            ReferenceError::InvalidPathComponent { .. }
        ));
        assert!(matches!(
            err("a/b/"),
            ReferenceError::InvalidPathComponent { .. }
        ));
        assert!(matches!(
            err("a..b"),
            ReferenceError::InvalidPathComponent { .. }
        ));
        assert!(matches!(
            err("-x.io/a"),
            ReferenceError::InvalidDomain { .. }
        ));
        assert!(matches!(
            err("x.io:port/a"),
            ReferenceError::InvalidDomain { .. }
        ));
        assert!(matches!(
            err("x.io:50a0/a"),
            ReferenceError::InvalidDomain { .. }
        ));
        assert!(matches!(
            err(&format!("x.io/{}", "a".repeat(260))),
            ReferenceError::NameTooLong { .. }
        ));
        let msg = err("me/Tool").to_string();
        assert!(msg.contains("must be lowercase"), "{msg}");
    }

    #[test]
    fn tag_grammar() {
        assert!(is_valid_tag("1.0"));
        assert!(is_valid_tag("_x"));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag(""));
        assert!(!is_valid_tag("a:b"));
    }
}
