//! `flynn/host:<version>`: the image the platform's own services (the schedulers) run
//! from, made at first boot from this very binary: baking a second copy into the
//! image would put the same 30 MB on the ISO twice. A docker-archive with one layer,
//! `/usr/bin/flynn-host` (static: nothing else is needed), written with the `tar`
//! crate and imported like the baked archives.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn tag() -> String {
    format!("flynn/host:{}", env!("CARGO_PKG_VERSION"))
}

fn entry(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(mode);
    // Every numeric field written: a new GNU header leaves uid and gid all NUL,
    // which strict readers (our image store's unpack) refuse as unreadable.
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_cksum();
    Ok(h)
}

/// Writes the archive of `binary` to `out`.
pub fn write(binary: &Path, out: &Path) -> io::Result<()> {
    let bin = std::fs::read(binary)?;
    let mut layer = tar::Builder::new(Vec::with_capacity(bin.len() + 4096));
    for dir in ["usr/", "usr/bin/"] {
        layer.append(
            &entry(dir, 0, 0o755, tar::EntryType::Directory)?,
            io::empty(),
        )?;
    }
    layer.append(
        &entry(
            "usr/bin/flynn-host",
            bin.len() as u64,
            0o755,
            tar::EntryType::Regular,
        )?,
        bin.as_slice(),
    )?;
    let layer = layer.into_inner()?;
    let diff_id = hex::encode(Sha256::digest(&layer));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/flynn-host"],
            "Env": ["PATH=/usr/bin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    })
    .to_string()
    .into_bytes();
    let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
    let layer_name = format!("{diff_id}/layer.tar");
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag()],
        "Layers": [layer_name],
    }])
    .to_string()
    .into_bytes();
    // Visible: the archive is made again from the binary at the next boot if a
    // crash takes it.
    flynn_fsutil::replace_with(out, flynn_fsutil::Durability::Visible, |file| {
        let mut archive = tar::Builder::new(io::BufWriter::new(file));
        for (name, data) in [
            ("manifest.json", manifest.as_slice()),
            (config_name.as_str(), config.as_slice()),
            (layer_name.as_str(), layer.as_slice()),
        ] {
            archive.append(
                &entry(name, data.len() as u64, 0o644, tar::EntryType::Regular)?,
                data,
            )?;
        }
        archive.into_inner()?.flush()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_archive_of_one_layer() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::write(&bin, b"#!not really a binary").unwrap();
        let out = dir.path().join("host.tar");
        write(&bin, &out).unwrap();
        let mut names = Vec::new();
        let mut manifest = String::new();
        let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                io::Read::read_to_string(&mut e, &mut manifest).unwrap();
            }
            names.push(name);
        }
        assert_eq!(names.len(), 3);
        assert!(manifest.contains(&tag()), "{manifest}");
        assert!(names[2].ends_with("/layer.tar"));
        // The layer's entries too (the image store's unpack reads these fields).
        let mut outer = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut layer = Vec::new();
        for e in outer.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_string_lossy().ends_with("/layer.tar") {
                io::Read::read_to_end(&mut e, &mut layer).unwrap();
            }
        }
        let mut inner = tar::Archive::new(layer.as_slice());
        for e in inner.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap()),
                (0, 0),
                "{:?}",
                e.path()
            );
        }
        // A real reader of docker archives takes it (skopeo is in the test packages).
        if let Ok(out) = std::process::Command::new("skopeo")
            .args([
                "inspect",
                "--config",
                &format!("docker-archive:{}", out.display()),
            ])
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("/usr/bin/flynn-host"));
        }
    }
}
