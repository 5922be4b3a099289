//! Image archives baked into the appliance (`/usr/share/flynn/images/*.tar`,
//! written by the image builder from its list), imported through the daemon's
//! API at first boot, so an air-gapped host needs no registry. What was
//! imported is recorded in `<state>/appliance-images.json` by file name and
//! size: an archive that a newer image adds is imported on its first boot, one
//! already imported is not imported again. The archives then are deleted from
//! the root tmpfs (they live on in the initramfs), which gives their memory back.

use std::collections::BTreeSet;
use std::path::Path;

use super::say;
use flynn_client::Client;

pub const BAKED_DIR: &str = "/usr/share/flynn/images";
const RECORD: &str = "appliance-images.json";

fn key(path: &Path) -> Option<String> {
    let size = std::fs::metadata(path).ok()?.len();
    Some(format!("{}:{size}", path.file_name()?.to_string_lossy()))
}

pub async fn import_baked(client: &Client, state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(BAKED_DIR) else {
        return;
    };
    let mut archives: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    let record_path = state_dir.join(RECORD);
    let mut done: BTreeSet<String> = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // The platform's own image, made from this binary (see host_image.rs) unless this
    // binary's was imported already.
    let exe_size = std::fs::metadata("/proc/self/exe")
        .map(|m| m.len())
        .unwrap_or(0);
    let host_name = format!("flynn-host-{}-{exe_size}.tar", env!("CARGO_PKG_VERSION"));
    if !done.iter().any(|k| k.starts_with(&format!("{host_name}:"))) {
        let path = Path::new(BAKED_DIR).join(&host_name);
        match crate::host_image::write(Path::new("/proc/self/exe"), &path) {
            Ok(()) => archives.push(path),
            Err(e) => say(format!(
                "warning: making the {} image: {e}",
                crate::host_image::tag()
            )),
        }
    }
    for archive in archives {
        let Some(k) = key(&archive) else { continue };
        if done.contains(&k) {
            let _ = std::fs::remove_file(&archive);
            continue;
        }
        // POST /images/import's body (the agent's `model::ImportRequest`).
        let request = serde_json::json!({ "path": archive.display().to_string(), "tag": null });
        let started = std::time::Instant::now();
        match client
            .call::<serde_json::Value>(hyper::Method::POST, "/images/import", Some(&request))
            .await
        {
            Ok(images) => {
                let names: Vec<String> = images
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|i| {
                        i.pointer("/loaded")
                            .and_then(|n| n.as_array())
                            .into_iter()
                            .flatten()
                            .filter_map(|n| n.as_str().map(str::to_string))
                    })
                    .collect();
                say(format!(
                    "imported {} ({}) in {} ms",
                    archive.display(),
                    if names.is_empty() {
                        "unnamed".into()
                    } else {
                        names.join(", ")
                    },
                    started.elapsed().as_millis()
                ));
                done.insert(k);
                let written = serde_json::to_vec(&done)
                    .map_err(std::io::Error::other)
                    .and_then(|b| {
                        flynn_fsutil::write_atomic(
                            &record_path,
                            &b,
                            flynn_fsutil::Durability::Visible,
                        )
                    });
                if let Err(e) = written {
                    say(format!("warning: recording the import in {RECORD}: {e}"));
                }
                let _ = std::fs::remove_file(&archive);
            }
            Err(e) => say(format!(
                "warning: importing {}: {e:#} (tried again at next boot)",
                archive.display()
            )),
        }
    }
}
