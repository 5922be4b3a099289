//! `import`, `save`, `images`, `rmi`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Method;
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::format::{ago, short_id, size, table};
use super::{ListArgs, for_each};
use crate::client::{Client, RequestBody, encode};
use crate::model::ImageRemoved;

/// Uploads the archive (a directory is sent as a tar stream made on the fly), so
/// the daemon need not share a filesystem with the client.
pub async fn import(client: &Client, path: &Path, tag: Option<&str>) -> Result<i32> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let body = upload_body(path.to_path_buf(), meta.is_dir());
    let mut uri = "/images/import".to_string();
    if let Some(tag) = tag {
        uri.push_str(&format!("?tag={}", encode(tag)));
    }
    let response = client
        .request(Method::POST, &uri, Some("application/x-tar"), body)
        .await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    let images: Vec<image::Imported> =
        serde_json::from_slice(&bytes).context("the daemon's answer is not the JSON expected")?;
    for imported in images {
        if imported.loaded.is_empty() {
            println!("Loaded image ID: {}", imported.image.id);
        }
        for name in &imported.loaded {
            println!("Loaded image: {}", familiar(name));
        }
    }
    Ok(0)
}

fn upload_body(path: std::path::PathBuf, is_dir: bool) -> RequestBody {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    std::thread::spawn(move || {
        let result = if is_dir {
            let mut builder = tar::Builder::new(ChannelWriter(tx.clone()));
            builder.follow_symlinks(false);
            builder
                .append_dir_all(".", &path)
                .and_then(|()| builder.finish())
        } else {
            std::fs::File::open(&path).and_then(|mut f| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            })
        };
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", path.display()),
            )));
        }
    });
    let stream = ReceiverStream::new(rx).map(|chunk| chunk.map(Frame::data));
    BodyExt::boxed(StreamBody::new(stream))
}

/// Feeds a tar builder's output into the upload body.
struct ChannelWriter(mpsc::Sender<std::io::Result<Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload cancelled"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `docker.io/library/busybox:latest` -> `busybox:latest`.
pub fn familiar(name: &str) -> String {
    name.parse::<image::Reference>()
        .map(|r| r.familiar())
        .unwrap_or_else(|_| name.to_string())
}

/// Splits a familiar name into repository and tag (or digest).
fn repo_and_tag(name: &str) -> (String, String) {
    let familiar = familiar(name);
    if let Some((repo, digest)) = familiar.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    match familiar.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (familiar, "<none>".to_string()),
    }
}

pub async fn list(client: &Client, args: &ListArgs) -> Result<i32> {
    let images: Vec<image::Image> = client.call(Method::GET, "/images", None::<&()>).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(0);
    }
    if args.quiet {
        for image in &images {
            println!("{}", short_id(&image.id));
        }
        return Ok(0);
    }
    let mut rows = Vec::new();
    for image in &images {
        let created = image
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|c| ago(c.with_timezone(&chrono::Utc)))
            .unwrap_or_else(|| "N/A".to_string());
        let names: Vec<(String, String)> = if image.names.is_empty() {
            vec![("<none>".to_string(), "<none>".to_string())]
        } else {
            image.names.iter().map(|n| repo_and_tag(n)).collect()
        };
        for (repo, tag) in names {
            rows.push(vec![
                repo,
                tag,
                short_id(&image.id),
                created.clone(),
                size(image.size),
            ]);
        }
    }
    table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows);
    Ok(0)
}

/// Streams `GET /images/{image}/archive` to `output` (written whole to a file beside
/// it, then renamed: an interrupted save leaves no partial archive under the name)
/// or to standard output, which must not be a terminal (as `docker save`).
pub async fn save(client: &Client, image: &str, output: Option<&Path>) -> Result<i32> {
    use std::io::{IsTerminal, Write};
    if output.is_none() && std::io::stdout().is_terminal() {
        anyhow::bail!(
            "refusing to write an archive to a terminal: give -o FILE or redirect standard output"
        );
    }
    let response = client
        .send_json(
            Method::GET,
            &format!("/images/{}/archive", encode(image)),
            None::<&()>,
        )
        .await?;
    let (mut sink, partial): (Box<dyn Write>, Option<(std::path::PathBuf, &Path)>) = match output {
        Some(path) => {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".partial");
            let partial = path.with_file_name(name);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            (
                Box::new(std::io::BufWriter::new(file)),
                Some((partial, path)),
            )
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let mut body = response.into_body();
    let copied: Result<()> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the archive broke off")?;
            if let Ok(data) = frame.into_data() {
                sink.write_all(&data).context("writing the archive")?;
            }
        }
        sink.flush().context("writing the archive")?;
        Ok(())
    }
    .await;
    drop(sink);
    match (copied, partial) {
        (Ok(()), Some((partial, path))) => std::fs::rename(&partial, path)
            .with_context(|| format!("cannot write {}", path.display()))?,
        (Ok(()), None) => {}
        (Err(e), partial) => {
            if let Some((partial, _)) = partial {
                let _ = std::fs::remove_file(partial);
            }
            return Err(e);
        }
    }
    Ok(0)
}

pub async fn remove(client: &Client, images: &[String]) -> Result<i32> {
    for_each(images, |name| async move {
        let removed: ImageRemoved = client
            .call(
                Method::DELETE,
                &format!("/images/{}", encode(&name)),
                None::<&()>,
            )
            .await?;
        for name in removed.untagged {
            println!("Untagged: {}", familiar(&name));
        }
        for id in removed.deleted {
            println!("Deleted: {id}");
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_repository_and_tag() {
        assert_eq!(
            repo_and_tag("docker.io/library/busybox:latest"),
            ("busybox".to_string(), "latest".to_string())
        );
        assert_eq!(
            repo_and_tag("localhost:5000/me/tool:1.0"),
            ("localhost:5000/me/tool".to_string(), "1.0".to_string())
        );
    }
}
