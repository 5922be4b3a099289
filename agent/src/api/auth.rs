//! The API token on TCP: `Authorization: Bearer <token>`.

use std::path::Path;

use hyper::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, Response};

use super::{ApiError, Body};

pub fn has_token<B>(req: &Request<B>, token: &str) -> bool {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so response timing does not
/// reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn unauthorized(state_dir: &Path) -> Response<Body> {
    let mut response = ApiError::Unauthorized(format!(
        "missing or wrong API token: pass --token or set FLYNN_TOKEN (the token is in {} on the host; \
         root on the host can use the unix socket instead)",
        state_dir.join("token").display()
    ))
    .into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"flynn-host\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let req = Request::builder()
            .header(AUTHORIZATION, "Bearer s3cret-token-value")
            .body(())
            .unwrap();
        assert!(has_token(&req, "s3cret-token-value"));
        assert!(!has_token(&req, "other-token-value!"));
        let req = Request::builder().body(()).unwrap();
        assert!(!has_token(&req, "s3cret-token-value"));
    }
}
