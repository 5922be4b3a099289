//! Resolving Docker's `user` strings against the container's own /etc/passwd and /etc/group.
//!
//! The rules follow Docker (which uses runc's `GetExecUser`): a name must exist in passwd;
//! a number need not (it then gets gid 0 and home "/"); an explicit group replaces the
//! primary group and suppresses supplementary groups; otherwise every group listing the
//! user's name becomes a supplementary group.

use crate::rootfs::{RootDir, RootfsError};

/// Files bigger than this are not account databases; refuse rather than read them.
const MAX_DB_BYTES: u64 = 4 * 1024 * 1024;

/// Docker refuses ids that would overflow a signed 32-bit integer.
const MAX_ID: u32 = i32::MAX as u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From the passwd entry; "/" when the user has none.
    pub home: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "unable to find user {0}: no matching entries in passwd file; \
         use a numeric uid or add the user to the image's /etc/passwd"
    )]
    UnknownUser(String),
    #[error(
        "unable to find group {0}: no matching entries in group file; \
         use a numeric gid or add the group to the image's /etc/group"
    )]
    UnknownGroup(String),
    #[error("invalid {kind} id {value:?}: ids must be between 0 and 2147483647")]
    IdRange { kind: &'static str, value: String },
    #[error("cannot read the container's account files: {0}")]
    Rootfs(#[from] RootfsError),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` ("", "name", "uid", "name:group", "uid:gid", ...) inside `root`.
pub fn resolve(root: &RootDir, spec: &str) -> Result<ExecUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, (!g.is_empty()).then_some(g)),
        None => (spec, None),
    };
    let user_arg = if user_part.is_empty() { "0" } else { user_part };
    let numeric_uid = parse_id(user_arg, "user")?;

    let passwd = match root.read_file("/etc/passwd", MAX_DB_BYTES)? {
        Some(data) => parse_passwd(&String::from_utf8_lossy(&data)),
        None => Vec::new(),
    };
    let matched = passwd
        .into_iter()
        .find(|e| e.name == user_arg || Some(e.uid) == numeric_uid);

    let (uid, mut gid, home, name) = match (matched, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, e.home, Some(e.name)),
        (None, Some(uid)) => (uid, 0, String::new(), None),
        (None, None) => return Err(UserError::UnknownUser(user_arg.to_owned())),
    };

    let needs_groups = group_part.is_some() || name.is_some();
    let groups = if needs_groups {
        match root.read_file("/etc/group", MAX_DB_BYTES)? {
            Some(data) => parse_group(&String::from_utf8_lossy(&data)),
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };

    let mut additional_gids = Vec::new();
    if let Some(group_arg) = group_part {
        let numeric_gid = parse_id(group_arg, "group")?;
        gid = match groups
            .iter()
            .find(|g| g.name == group_arg || Some(g.gid) == numeric_gid)
        {
            Some(g) => g.gid,
            None => numeric_gid.ok_or_else(|| UserError::UnknownGroup(group_arg.to_owned()))?,
        };
    } else if let Some(name) = &name {
        for g in &groups {
            if g.members.iter().any(|m| m == name) && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }

    Ok(ExecUser {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() {
            "/".to_owned()
        } else {
            home
        },
    })
}

/// `Some(id)` when `value` is numeric (and in range), `None` when it is a name.
fn parse_id(value: &str, kind: &'static str) -> Result<Option<u32>, UserError> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match value.parse::<u32>() {
        Ok(id) if id <= MAX_ID => Ok(Some(id)),
        _ => Err(UserError::IdRange {
            kind,
            value: value.to_owned(),
        }),
    }
}

fn records(data: &str) -> impl Iterator<Item = Vec<&str>> {
    data.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

/// Lines that do not parse are skipped, like libc does, rather than failing the container.
fn parse_passwd(data: &str) -> Vec<PasswdEntry> {
    records(data)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(data: &str) -> Vec<GroupEntry> {
    records(data)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:1001::\n";
    const GROUP: &str = "root:x:0:\n\
        app:x:1000:\n\
        audio:x:29:app,other\n\
        video:x:44: other , app \n\
        staff:x:50:\n";

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> (tempfile::TempDir, RootDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            std::fs::write(dir.path().join("etc/group"), g).unwrap();
        }
        let root = RootDir::open(dir.path()).unwrap();
        (dir, root)
    }

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> ExecUser {
        ExecUser {
            uid,
            gid,
            additional_gids: groups.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn docker_user_syntax() {
        let (_d, root) = rootfs(Some(PASSWD), Some(GROUP));
        let cases = [
            ("", user(0, 0, &[], "/root")),
            ("root", user(0, 0, &[], "/root")),
            ("app", user(1000, 1000, &[29, 44], "/home/app")),
            ("1000", user(1000, 1000, &[29, 44], "/home/app")),
            ("app:staff", user(1000, 50, &[], "/home/app")),
            ("app:44", user(1000, 44, &[], "/home/app")),
            ("app:", user(1000, 1000, &[29, 44], "/home/app")),
            ("1000:777", user(1000, 777, &[], "/home/app")),
            ("4242", user(4242, 0, &[], "/")),
            ("4242:audio", user(4242, 29, &[], "/")),
            ("nohome", user(1001, 1001, &[], "/")),
        ];
        for (spec, want) in cases {
            assert_eq!(resolve(&root, spec).unwrap(), want, "user {spec:?}");
        }
    }

    #[test]
    fn unknown_names_are_errors() {
        let (_d, root) = rootfs(Some(PASSWD), Some(GROUP));
        let err = resolve(&root, "nobody").unwrap_err();
        assert!(matches!(&err, UserError::UnknownUser(n) if n == "nobody"));
        assert!(
            err.to_string()
                .starts_with("unable to find user nobody: no matching entries in passwd file")
        );
        let err = resolve(&root, "app:wheel").unwrap_err();
        assert!(matches!(&err, UserError::UnknownGroup(g) if g == "wheel"));
        assert!(matches!(
            resolve(&root, "99999999999"),
            Err(UserError::IdRange { .. })
        ));
    }

    #[test]
    fn missing_files() {
        let (_d, root) = rootfs(None, None);
        assert_eq!(resolve(&root, "").unwrap(), user(0, 0, &[], "/"));
        assert_eq!(resolve(&root, "5:6").unwrap(), user(5, 6, &[], "/"));
        assert!(matches!(
            resolve(&root, "app"),
            Err(UserError::UnknownUser(_))
        ));
    }

    #[test]
    fn passwd_symlink_to_host_is_not_followed() {
        // A host file that would resolve "app" if the link were followed on the host.
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        std::fs::write(&host_passwd, "app:x:4000:4000::/host:/bin/sh\n").unwrap();
        let (dir, root) = rootfs(None, None);
        symlink(&host_passwd, dir.path().join("etc/passwd")).unwrap();
        assert!(matches!(
            resolve(&root, "app"),
            Err(UserError::UnknownUser(_))
        ));

        // The same link resolves to the rootfs's own copy at that path, if it has one.
        let inside = dir.path().join(host_passwd.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, "app:x:7:8::/inside:/bin/sh\n").unwrap();
        assert_eq!(resolve(&root, "app").unwrap(), user(7, 8, &[], "/inside"));
    }
}
