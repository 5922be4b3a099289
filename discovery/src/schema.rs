//! The etcd key layout (see the crate documentation) and the checks on names that
//! become parts of keys.

use crate::error::DiscoveryError;

pub const ROOT: &str = "/flynn/";
pub const HOSTS: &str = "/flynn/hosts/";
pub const SERVICES: &str = "/flynn/services/";
pub const OVERLAY_CONFIG: &str = "/flynn/overlay/config";
pub const SUBNETS: &str = "/flynn/overlay/subnets/";
pub const OWNERS: &str = "/flynn/overlay/owners/";
pub const ROUTES: &str = "/flynn/routes/";
pub const APPS: &str = "/flynn/apps/";
pub const CLUSTER: &str = "/flynn/cluster";
pub const FORMATIONS: &str = "/flynn/formations/";
pub const DRAIN: &str = "/flynn/drain/";
pub const BOOTSTRAP: &str = "/flynn/bootstrap";
pub const RELEASES: &str = "/flynn/releases/";
pub const DEPLOYS: &str = "/flynn/deploys/";

pub fn host(id: &str) -> String {
    format!("{HOSTS}{id}")
}

pub fn app(name: &str) -> String {
    format!("{APPS}{name}")
}

/// The prefix of one app's releases (with the trailing `/`).
pub fn releases(app: &str) -> String {
    format!("{RELEASES}{app}/")
}

pub fn release(app: &str, id: &str) -> String {
    format!("{RELEASES}{app}/{id}")
}

/// The prefix of one app's deploys (with the trailing `/`).
pub fn deploys(app: &str) -> String {
    format!("{DEPLOYS}{app}/")
}

pub fn deploy(app: &str, id: &str) -> String {
    format!("{DEPLOYS}{app}/{id}")
}

/// The prefix of one app's formations (with the trailing `/`).
pub fn formations_of(app: &str) -> String {
    format!("{FORMATIONS}{app}/")
}

pub fn formation(app: &str, process_type: &str) -> String {
    format!("{FORMATIONS}{app}/{process_type}")
}

pub fn drain(host: &str) -> String {
    format!("{DRAIN}{host}")
}

pub fn route(id: &str) -> String {
    format!("{ROUTES}{id}")
}

/// The prefix of one service's instances (with the trailing `/`).
pub fn service(name: &str) -> String {
    format!("{SERVICES}{name}/")
}

pub fn instance(service: &str, id: &str) -> String {
    format!("{SERVICES}{service}/{id}")
}

/// `(service, instance id)` of an instance key.
pub fn parse_instance(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(SERVICES)?.split_once('/')
}

/// Service names are DNS labels (they are answered as `<name>.discoverd`): 1-63
/// lowercase letters, digits and '-', not starting or ending with '-'.
pub fn check_service(name: &str) -> Result<(), DiscoveryError> {
    let bad = |reason| {
        Err(DiscoveryError::InvalidName {
            what: "service name",
            value: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("it must be 1-63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters, digits and '-' are allowed (it is a DNS label)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("it must not start or end with '-'");
    }
    if name == "leader" {
        return bad("\"leader\" is reserved (leader.<service>.discoverd names a leader)");
    }
    Ok(())
}

/// Host and instance ids become one key segment.
pub fn check_id(what: &'static str, id: &str) -> Result<(), DiscoveryError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::InvalidName {
            what,
            value: id.to_string(),
            reason: "use 1-128 letters, digits, '-', '_', '.' or ':'",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web", "a", "api-2", &"x".repeat(63)] {
            check_service(good).unwrap();
        }
        for bad in [
            "",
            "Web",
            "a.b",
            "-a",
            "a-",
            "leader",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(check_service(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_instance(&instance("web", "j1-80")),
            Some(("web", "j1-80"))
        );
        assert!(check_id("instance id", "abc-80").is_ok());
        assert!(check_id("instance id", "a/b").is_err());
    }
}
