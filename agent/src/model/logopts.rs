//! Docker's json-file log options, `--log-opt max-size=10m --log-opt max-file=3`:
//! parsed and checked here because the CLI, the daemon's config file and the job
//! supervisor all read them.

use std::collections::BTreeMap;

use runtime::logs::Rotation;

/// The log options a job (or the daemon's `log_opts`) may give.
pub const KNOWN: &[&str] = &["max-size", "max-file"];

/// The rotation the options ask for: none without `max-size` (Docker's default: the
/// log grows without bound); `max-file` defaults to 1 (the log is emptied when full).
pub fn rotation(opts: &BTreeMap<String, String>) -> Result<Option<Rotation>, String> {
    if let Some(k) = opts.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "unknown log option {k:?}: the json-file log takes max-size (e.g. 10m) and max-file (e.g. 3)"
        ));
    }
    let max_files = match opts.get("max-file") {
        None => 1,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(format!(
                    "log option max-file={v:?}: give a whole number of files from 1 to 100"
                ));
            }
        },
    };
    let Some(size) = opts.get("max-size") else {
        if opts.contains_key("max-file") {
            return Err("log option max-file needs max-size too (e.g. max-size=10m)".into());
        }
        return Ok(None);
    };
    let max_size = parse_size(size)?;
    Ok(Some(Rotation {
        max_size,
        max_files,
    }))
}

/// Docker's sizes: a number with an optional unit k, m or g (powers of 1024, as
/// Docker's `units.RAMInBytes`), case-insensitive, an optional `b` after it.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("log option max-size={text:?}: give a size such as 10m, 512k or 1g (at least 4k)")
    };
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let size = n.checked_mul(mult).ok_or_else(bad)?;
    // Below one entry's size every line would be a file of its own.
    if size < 4096 {
        return Err(bad());
    }
    Ok(size)
}

/// `KEY=VALUE` of `--log-opt`.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "--log-opt {text:?}: give KEY=VALUE, e.g. max-size=10m"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn docker_sizes_and_counts() {
        assert_eq!(parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        for bad in ["", "m", "10x", "-1m", "1k", "99999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(rotation(&opts(&[])).unwrap(), None);
        assert_eq!(
            rotation(&opts(&[("max-size", "1m"), ("max-file", "3")])).unwrap(),
            Some(Rotation {
                max_size: 1 << 20,
                max_files: 3
            })
        );
        assert_eq!(
            rotation(&opts(&[("max-size", "1m")]))
                .unwrap()
                .unwrap()
                .max_files,
            1
        );
        let e = rotation(&opts(&[("max-file", "3")])).unwrap_err();
        assert!(e.contains("max-size"), "{e}");
        let e = rotation(&opts(&[("mode", "non-blocking")])).unwrap_err();
        assert!(e.contains("unknown log option"), "{e}");
        assert!(rotation(&opts(&[("max-size", "1m"), ("max-file", "0")])).is_err());
        assert_eq!(parse_pair("max-size=1m").unwrap().1, "1m");
        assert!(parse_pair("max-size").is_err());
    }
}
