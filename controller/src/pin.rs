//! A release names its image by digest: `busybox` becomes
//! `docker.io/library/busybox:latest@sha256:<manifest digest>` as the cluster's hosts
//! hold it when the release is made. A later import or pull that moves the tag then
//! changes no running release, and every job of a release runs the same bytes on
//! every host (Flynn's releases named their artifacts by digest for the same reason).
//!
//! The hosts are asked, not a registry: images reach this cluster by `flynn-host
//! import` or `pull` on its hosts, and a job only runs an image its host stores.

use std::collections::BTreeMap;
use std::time::Duration;

use discovery::Etcd;
use hyper::Method;
use serde::Deserialize;

use crate::api::Error;

/// How long one host may take to list its images.
const HOST_TIMEOUT: Duration = Duration::from_secs(10);

/// The part of an agent's `GET /images` entry this needs.
#[derive(Deserialize)]
struct HostImage {
    names: Vec<String>,
    manifest_digest: String,
}

/// `image` with the digest its hosts hold; an image already named by digest is
/// kept as given (once its syntax is checked).
pub(crate) async fn pin(etcd: &Etcd, token: &str, image: &str) -> Result<String, Error> {
    let reference: image::Reference = image
        .parse()
        .map_err(|e| Error::BadRequest(format!("image {image:?}: {e}")))?;
    if reference.digest().is_some() {
        return Ok(image.to_string());
    }
    let full = reference.to_string();
    let hosts = discovery::hosts::list(etcd).await?;
    let mut asks = tokio::task::JoinSet::new();
    for host in hosts {
        let Some(api) = host.api else { continue };
        let token = token.to_string();
        asks.spawn(async move {
            let listed = tokio::time::timeout(HOST_TIMEOUT, async {
                let client = flynn_client::Client::from_options(Some(&api), Some(&token))?;
                client
                    .call::<Vec<HostImage>>(Method::GET, "/images", None::<&()>)
                    .await
            })
            .await;
            (host.id, listed)
        });
    }
    // digest -> the hosts holding the image under that digest
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut answered, mut failed) = (0, Vec::new());
    while let Some(joined) = asks.join_next().await {
        let Ok((host, listed)) = joined else { continue };
        match listed {
            Ok(Ok(images)) => {
                answered += 1;
                if let Some(i) = images.into_iter().find(|i| i.names.contains(&full)) {
                    found.entry(i.manifest_digest).or_default().push(host);
                }
            }
            Ok(Err(e)) => failed.push(format!("{host}: {e:#}")),
            Err(_) => failed.push(format!("{host}: no answer in {HOST_TIMEOUT:?}")),
        }
    }
    if !failed.is_empty() {
        tracing::warn!(image = %full, hosts = ?failed, "hosts not asked for the image's digest");
    }
    let mut digests = found.into_iter();
    match (digests.next(), digests.next()) {
        (Some((digest, _)), None) => Ok(format!("{full}@{digest}")),
        (None, _) if answered == 0 => Err(Error::Unavailable(format!(
            "no host answered to say which {full} it holds ({}): try again when the hosts are up",
            failed.join("; ")
        ))),
        (None, _) => Err(Error::BadRequest(format!(
            "no host has the image {full}: import it (flynn-host import) or pull it \
             (flynn-host pull) on the hosts first"
        ))),
        (Some(first), Some(second)) => {
            let all: Vec<String> = [first, second]
                .into_iter()
                .chain(digests)
                .map(|(d, hosts)| format!("{d} on {}", hosts.join(", ")))
                .collect();
            Err(Error::Conflict(format!(
                "the hosts hold different images named {full} ({}): import the same image on \
                 every host, or name one by digest ({}@sha256:...)",
                all.join("; "),
                reference.familiar_name()
            )))
        }
    }
}
