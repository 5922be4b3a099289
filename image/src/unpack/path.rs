//! Lexical cleaning of entry names, before any filesystem access.

/// Why a name cannot be placed in the layer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Escapes;

/// Splits a tar name into clean components. A leading `/` is dropped (absolute names are
/// taken relative to the layer root, as Docker does), `.` and empty components vanish, and
/// `..` removes the previous component. A `..` that would climb above the root is refused
/// rather than clamped: no legitimate layer contains one, so it marks a hostile archive.
pub(super) fn clean(name: &[u8]) -> Result<Vec<&[u8]>, Escapes> {
    let mut out: Vec<&[u8]> = Vec::new();
    for component in name.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(Escapes);
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Joins components back into a relative path (the empty path is the root).
pub(super) fn join(components: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(components.iter().map(|c| c.len() + 1).sum());
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

/// Where a symlink found at `dir/<link>` points, interpreted inside the root the way
/// `RESOLVE_IN_ROOT` does: absolute targets start at the root and `..` stops at it.
pub(super) fn resolve_link_in_root(dir: &[Vec<u8>], target: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = if target.starts_with(b"/") {
        Vec::new()
    } else {
        dir.to_vec()
    };
    for component in target.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            other => out.push(other.to_vec()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Result<Vec<String>, Escapes> {
        clean(s.as_bytes()).map(|v| {
            v.into_iter()
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn cleaning() {
        assert_eq!(c("./a/b/").unwrap(), ["a", "b"]);
        assert_eq!(c("/etc//passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("a/../b").unwrap(), ["b"]);
        assert!(c("./").unwrap().is_empty());
        assert_eq!(c("../x"), Err(Escapes));
        assert_eq!(c("a/../../x"), Err(Escapes));
        assert_eq!(c("/../x"), Err(Escapes));
        assert_eq!(join(&[b"a", b"b"]), b"a/b");
    }

    #[test]
    fn links_resolve_inside_root() {
        let dir = vec![b"a".to_vec(), b"b".to_vec()];
        assert_eq!(
            resolve_link_in_root(&dir, b"/tmp/x"),
            [b"tmp".to_vec(), b"x".to_vec()]
        );
        assert_eq!(
            resolve_link_in_root(&dir, b"../../../../c"),
            [b"c".to_vec()]
        );
        assert_eq!(
            resolve_link_in_root(&dir, b"c"),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }
}
