//! Services that jobs declare: the `-s` syntax (the CLI) and the checks of a job's
//! declarations (the daemon, at create).

use std::collections::BTreeMap;

use super::{HealthCheck, HealthCheckKind, NetworkMode, ServiceDecl};

/// Checks a job's declarations (at create, so a bad one is refused before anything runs).
pub fn validate(decls: &[ServiceDecl], mode: NetworkMode) -> Result<(), String> {
    if !decls.is_empty() && mode == NetworkMode::None {
        return Err("services need a network: use the bridge (default) or --net host".into());
    }
    for (i, d) in decls.iter().enumerate() {
        discovery::schema::check_service(&d.name).map_err(|e| e.to_string())?;
        if d.port == 0 {
            return Err(format!("service {}: port 0 is not a port", d.name));
        }
        if decls[..i]
            .iter()
            .any(|o| o.name == d.name && o.port == d.port)
        {
            return Err(format!("service {}:{} is declared twice", d.name, d.port));
        }
        if let Some(c) = &d.check {
            if let Some(p) = &c.path
                && (!p.starts_with('/') || p.bytes().any(|b| b.is_ascii_control() || b == b' '))
            {
                return Err(format!(
                    "service {}: health check path {p:?} must start with '/' and have no spaces",
                    d.name
                ));
            }
            if c.path.is_some() && c.kind != HealthCheckKind::Http {
                return Err(format!("service {}: a path needs an http check", d.name));
            }
            for (what, v) in [("interval_ms", c.interval_ms), ("timeout_ms", c.timeout_ms)] {
                if let Some(v) = v
                    && !(10..=3_600_000).contains(&v)
                {
                    return Err(format!(
                        "service {}: {what} {v} is not in 10-3600000",
                        d.name
                    ));
                }
            }
            for (what, v) in [("fall", c.fall), ("rise", c.rise)] {
                if v == Some(0) {
                    return Err(format!("service {}: {what} must be at least 1", d.name));
                }
            }
        }
    }
    Ok(())
}

/// Parses `NAME:PORT[,check=tcp|http[:PATH]][,interval=MS][,timeout=MS][,fall=N][,rise=N][,KEY=VALUE...]`;
/// other `KEY=VALUE` pairs become metadata.
pub fn parse_decl(s: &str) -> Result<ServiceDecl, String> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or_default();
    let (name, port) = head
        .split_once(':')
        .ok_or_else(|| format!("service {s:?}: give NAME:PORT, e.g. web:8080"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("service {s:?}: {port:?} is not a port"))?;
    let mut check: Option<HealthCheck> = None;
    let mut meta = BTreeMap::new();
    let mut opts: Vec<(&str, &str)> = Vec::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("service {s:?}: {p:?} is not KEY=VALUE"))?;
        match k {
            "check" => {
                let (kind, path) = match v.split_once(':') {
                    Some(("http", path)) => (HealthCheckKind::Http, Some(path.to_string())),
                    None if v == "http" => (HealthCheckKind::Http, None),
                    None if v == "tcp" => (HealthCheckKind::Tcp, None),
                    _ => {
                        return Err(format!(
                            "service {s:?}: check={v}: use tcp, http or http:/PATH"
                        ));
                    }
                };
                check = Some(HealthCheck {
                    kind,
                    path,
                    interval_ms: None,
                    timeout_ms: None,
                    fall: None,
                    rise: None,
                });
            }
            "interval" | "timeout" | "fall" | "rise" => opts.push((k, v)),
            _ => {
                meta.insert(k.to_string(), v.to_string());
            }
        }
    }
    for (k, v) in opts {
        let c = check
            .as_mut()
            .ok_or_else(|| format!("service {s:?}: {k}= needs check=tcp or check=http first"))?;
        let n: u64 = v
            .trim_end_matches("ms")
            .parse()
            .map_err(|_| format!("service {s:?}: {k}={v} is not a number"))?;
        match k {
            "interval" => c.interval_ms = Some(n),
            "timeout" => c.timeout_ms = Some(n),
            "fall" => c.fall = Some(n as u32),
            _ => c.rise = Some(n as u32),
        }
    }
    Ok(ServiceDecl {
        name: name.to_string(),
        port,
        check,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_declarations() {
        let d = parse_decl("web:8080").unwrap();
        assert_eq!(
            (d.name.as_str(), d.port, d.check.is_none()),
            ("web", 8080, true)
        );
        let d = parse_decl("api:80,check=http:/health,interval=200,fall=1,zone=a").unwrap();
        let c = d.check.unwrap();
        assert_eq!(c.kind, HealthCheckKind::Http);
        assert_eq!(c.path.as_deref(), Some("/health"));
        assert_eq!((c.interval_ms, c.fall), (Some(200), Some(1)));
        assert_eq!(d.meta.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            parse_decl("db:5432,check=tcp").unwrap().check.unwrap().kind,
            HealthCheckKind::Tcp
        );
        for bad in [
            "web",
            "web:x",
            "web:80,check=udp",
            "web:80,interval=5",
            "web:80,junk",
        ] {
            assert!(parse_decl(bad).is_err(), "{bad}");
        }
        let ok = [parse_decl("web:80").unwrap()];
        validate(&ok, NetworkMode::Bridge).unwrap();
        assert!(validate(&ok, NetworkMode::None).is_err());
        assert!(validate(&[parse_decl("Web:80").unwrap()], NetworkMode::Bridge).is_err());
        assert!(validate(&[parse_decl("web:0").unwrap()], NetworkMode::Bridge).is_err());
        let twice = [parse_decl("web:80").unwrap(), parse_decl("web:80").unwrap()];
        assert!(validate(&twice, NetworkMode::Bridge).is_err());
    }
}
