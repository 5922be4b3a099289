//! The Debian kernel (`linux-image-amd64`) and its modules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no kernel in /boot (vmlinuz-*): apt-get install linux-image-amd64")]
    NoKernel,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel module {0} is not in modules.dep of {1}")]
    NoModule(String, String),
}

pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// The newest `/boot/vmlinuz-*` with its `/lib/modules/<version>`.
    pub fn find() -> Result<Kernel, KernelError> {
        let entries = std::fs::read_dir("/boot").map_err(|e| KernelError::Io {
            path: "/boot".into(),
            source: e,
        })?;
        let mut versions: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_string)
            })
            .filter(|v| {
                Path::new("/lib/modules")
                    .join(v)
                    .join("modules.dep")
                    .is_file()
            })
            .collect();
        versions.sort();
        let version = versions.pop().ok_or(KernelError::NoKernel)?;
        Ok(Kernel {
            image: PathBuf::from(format!("/boot/vmlinuz-{version}")),
            modules_dir: PathBuf::from(format!("/lib/modules/{version}")),
            version,
        })
    }

    /// The module files for `names` and everything they depend on, dependencies
    /// first (the order `insmod` needs).
    pub fn modules_with_deps(&self, names: &[&str]) -> Result<Vec<PathBuf>, KernelError> {
        let dep_path = self.modules_dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(|e| KernelError::Io {
            path: dep_path.clone(),
            source: e,
        })?;
        let deps: Vec<(String, Vec<String>)> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| {
                (
                    m.to_string(),
                    d.split_whitespace().map(str::to_string).collect(),
                )
            })
            .collect();
        let find = |name: &str| -> Option<&(String, Vec<String>)> {
            deps.iter().find(|(m, _)| {
                let file = m.rsplit('/').next().unwrap_or(m);
                let stem = file.split(".ko").next().unwrap_or(file);
                stem.replace('-', "_") == name.replace('-', "_")
            })
        };
        let mut ordered = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(
            path: &str,
            deps: &[(String, Vec<String>)],
            seen: &mut BTreeSet<String>,
            ordered: &mut Vec<String>,
        ) {
            if !seen.insert(path.to_string()) {
                return;
            }
            if let Some((_, ds)) = deps.iter().find(|(m, _)| m == path) {
                for d in ds {
                    visit(d, deps, seen, ordered);
                }
            }
            ordered.push(path.to_string());
        }
        for name in names {
            let (path, _) = find(name)
                .ok_or_else(|| KernelError::NoModule(name.to_string(), self.version.clone()))?;
            visit(path, &deps, &mut seen, &mut ordered);
        }
        Ok(ordered
            .into_iter()
            .map(|m| self.modules_dir.join(m))
            .collect())
    }
}
