//! Configuration from outside the image: a NoCloud seed (a vfat or iso9660 file
//! system labelled `cidata` holding `user-data` and `meta-data`, as cloud-init
//! defines it) and EC2's instance metadata service (IMDSv2: a session token from
//! `PUT /latest/api/token`, then `GET /latest/user-data`). EC2 is asked only when
//! the command line says `flynn.datasource=ec2`, or the firmware says this is an
//! EC2 instance (DMI vendor "Amazon EC2", or a Xen UUID starting with "ec2").

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::disk::{self, Content};

/// The well-known link-local address of EC2's instance metadata service.
pub const EC2_METADATA: &str = "169.254.169.254:80";

#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error("mounting the seed {dev} ({fs}): {source}")]
    Mount {
        dev: String,
        fs: &'static str,
        source: nix::Error,
    },
    #[error("reading {path} from the seed: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("EC2 metadata service ({addr}) {what}: {reason}")]
    Ec2 {
        addr: String,
        what: &'static str,
        reason: String,
    },
}

#[derive(Debug, Default)]
pub struct Found {
    pub source: String,
    pub user_data: Option<String>,
    pub meta_data: Option<String>,
    pub hostname: Option<String>,
}

/// Reads the first `cidata` seed, if there is one.
pub fn nocloud() -> Result<Option<Found>, DatasourceError> {
    let Some((dev, content)) = disk::find_labelled("cidata") else {
        return Ok(None);
    };
    let fs = match content {
        Content::Iso9660 { .. } => "iso9660",
        _ => "vfat",
    };
    // A seed's FAT may be in any of these code pages; an ISO may name files in UTF-8.
    super::modules::demand(match content {
        Content::Iso9660 { .. } => &["isofs", "nls_utf8"],
        _ => &["vfat", "nls_cp437", "nls_ascii", "nls_utf8"],
    });
    let target = Path::new("/run/flynn/seed");
    let _ = std::fs::create_dir_all(target);
    mount(
        Some(&dev),
        target,
        Some(fs),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| DatasourceError::Mount {
        dev: dev.display().to_string(),
        fs,
        source: e,
    })?;
    let read = |name: &str| -> Result<Option<String>, DatasourceError> {
        let path = target.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DatasourceError::Read {
                path: name.to_string(),
                source: e,
            }),
        }
    };
    let found = read("user-data").and_then(|u| Ok((u, read("meta-data")?)));
    let _ = umount2(target, MntFlags::MNT_DETACH);
    let (user_data, meta_data) = found?;
    let hostname = meta_data
        .as_deref()
        .and_then(super::settings::meta_data_hostname);
    Ok(Some(Found {
        source: format!("NoCloud seed on {}", dev.display()),
        user_data,
        meta_data,
        hostname,
    }))
}

/// Whether the firmware says this machine is an EC2 instance.
pub fn on_ec2() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    read("/sys/class/dmi/id/sys_vendor").trim() == "Amazon EC2"
        || read("/sys/class/dmi/id/bios_vendor").trim() == "Amazon EC2"
        || read("/sys/hypervisor/uuid").starts_with("ec2")
}

async fn http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    header: (&str, &str),
) -> Result<(StatusCode, String), String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.ip().to_string())
        .header(header.0, header.1)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// User data and host name from EC2's metadata service (IMDSv2), trying for
/// `patience` while the network comes up.
pub async fn ec2(patience: Duration) -> Result<Found, DatasourceError> {
    let addr: SocketAddr = EC2_METADATA.parse().map_err(|_| DatasourceError::Ec2 {
        addr: EC2_METADATA.into(),
        what: "address",
        reason: "unparsable".into(),
    })?;
    let fail = |what: &'static str, reason: String| DatasourceError::Ec2 {
        addr: addr.to_string(),
        what,
        reason,
    };
    let deadline = tokio::time::Instant::now() + patience;
    let token = loop {
        match http(
            addr,
            Method::PUT,
            "/latest/api/token",
            ("x-aws-ec2-metadata-token-ttl-seconds", "300"),
        )
        .await
        {
            Ok((StatusCode::OK, token)) => break token,
            Ok((status, _)) => return Err(fail("refused a session token", status.to_string())),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(fail("did not answer", e));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let get = |path: &'static str| {
        let token = token.clone();
        async move {
            match http(
                addr,
                Method::GET,
                path,
                ("x-aws-ec2-metadata-token", token.trim()),
            )
            .await
            {
                Ok((StatusCode::OK, body)) => Ok(Some(body)),
                Ok((StatusCode::NOT_FOUND, _)) => Ok(None),
                Ok((status, _)) => Err(fail("answered an error", format!("{path}: {status}"))),
                Err(e) => Err(fail("failed", format!("{path}: {e}"))),
            }
        }
    };
    let user_data = get("/latest/user-data").await?;
    let hostname = get("/latest/meta-data/local-hostname")
        .await?
        .map(|h| h.trim().split('.').next().unwrap_or("").to_string())
        .filter(|h| super::settings::valid_hostname(h));
    Ok(Found {
        source: format!("EC2 metadata service {addr}"),
        user_data,
        meta_data: None,
        hostname,
    })
}
