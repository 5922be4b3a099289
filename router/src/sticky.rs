//! Sticky sessions: the backend a client was sent to, in a cookie it cannot read or
//! forge (ChaCha20-Poly1305 from `ring`, a random nonce per cookie). Every router of
//! the cluster shares the key, so the cookie works whichever router the next request
//! reaches.

use std::net::SocketAddr;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

pub const COOKIE: &str = "_flynn_route";

pub struct StickyKey(LessSafeKey);

#[derive(Debug, thiserror::Error)]
#[error("the sticky-session key must be 32 bytes")]
pub struct BadKey;

impl StickyKey {
    pub fn new(key: &[u8]) -> Result<StickyKey, BadKey> {
        UnboundKey::new(&CHACHA20_POLY1305, key)
            .map(|k| StickyKey(LessSafeKey::new(k)))
            .map_err(|_| BadKey)
    }

    /// The cookie value naming `backend` (URL-safe hex).
    pub fn seal(&self, backend: SocketAddr) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        for b in &mut nonce {
            *b = fastrand::u8(..);
        }
        let mut data = backend.to_string().into_bytes();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .ok()?;
        let mut out = String::with_capacity((NONCE_LEN + data.len()) * 2);
        for b in nonce.iter().chain(data.iter()) {
            out.push_str(&format!("{b:02x}"));
        }
        Some(out)
    }

    /// The backend a cookie names; `None` for anything not sealed by this key.
    pub fn open(&self, value: &str) -> Option<SocketAddr> {
        if !value.len().is_multiple_of(2) || value.len() < (NONCE_LEN + 16) * 2 || value.len() > 512
        {
            return None;
        }
        let mut bytes: Vec<u8> = (0..value.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(value.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        let mut data = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
        let plain = self.0.open_in_place(nonce, Aad::empty(), &mut data).ok()?;
        std::str::from_utf8(plain).ok()?.parse().ok()
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn find_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_forgeries() {
        let key = StickyKey::new(&[7u8; 32]).unwrap();
        let addr: SocketAddr = "100.100.1.2:8080".parse().unwrap();
        let c = key.seal(addr).unwrap();
        assert_eq!(key.open(&c), Some(addr));
        assert_ne!(key.seal(addr).unwrap(), c, "a fresh nonce each time");
        let mut forged = c.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.open(std::str::from_utf8(&forged).unwrap()), None);
        let other = StickyKey::new(&[8u8; 32]).unwrap();
        assert_eq!(other.open(&c), None);
        assert_eq!(key.open("zz"), None);
        assert_eq!(key.open(""), None);
        assert!(StickyKey::new(&[1u8; 5]).is_err());
        assert_eq!(
            find_cookie("a=1; _flynn_route=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert_eq!(find_cookie("a=1", COOKIE), None);
    }
}
