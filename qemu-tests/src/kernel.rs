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
        // Soft dependencies ("softdep libcrc32c pre: crc32c") are modules a module
        // needs loaded first without linking to them (libcrc32c asks the crypto API for
        // crc32c at init and fails without it); they name a module or an alias.
        let read_optional =
            |name: &str| std::fs::read_to_string(self.modules_dir.join(name)).unwrap_or_default();
        let softdeps: Vec<(String, Vec<String>)> = read_optional("modules.softdep")
            .lines()
            .filter_map(|l| l.strip_prefix("softdep "))
            .filter_map(|l| {
                let (module, rest) = l.split_once(' ')?;
                let pre = rest.split(" post:").next()?.trim().strip_prefix("pre:")?;
                Some((
                    module.to_string(),
                    pre.split_whitespace().map(str::to_string).collect(),
                ))
            })
            .collect();
        let aliases = read_optional("modules.alias");
        let resolve = |name: &str| -> Option<String> {
            if let Some((path, _)) = find(name) {
                return Some(path.clone());
            }
            // Of an alias's providers the generic one: it runs on any CPU (TCG's too).
            let providers: Vec<&str> = aliases
                .lines()
                .filter_map(|l| l.strip_prefix("alias "))
                .filter_map(|l| l.split_once(' '))
                .filter(|(alias, _)| *alias == name)
                .map(|(_, module)| module)
                .collect();
            let chosen = providers
                .iter()
                .find(|m| m.ends_with("_generic"))
                .or(providers.first())?;
            find(chosen).map(|(path, _)| path.clone())
        };
        let stem = |path: &str| {
            let file = path.rsplit('/').next().unwrap_or(path);
            file.split(".ko").next().unwrap_or(file).replace('-', "_")
        };
        let mut ordered = Vec::new();
        let mut seen = BTreeSet::new();
        struct Graph<'a> {
            deps: &'a [(String, Vec<String>)],
            pre: &'a dyn Fn(&str) -> Vec<String>,
        }
        fn visit(path: &str, g: &Graph, seen: &mut BTreeSet<String>, ordered: &mut Vec<String>) {
            if !seen.insert(path.to_string()) {
                return;
            }
            for soft in (g.pre)(path) {
                visit(&soft, g, seen, ordered);
            }
            if let Some((_, ds)) = g.deps.iter().find(|(m, _)| m == path) {
                for d in ds {
                    visit(d, g, seen, ordered);
                }
            }
            ordered.push(path.to_string());
        }
        let pre = |path: &str| -> Vec<String> {
            let name = stem(path);
            softdeps
                .iter()
                .filter(|(m, _)| m.replace('-', "_") == name)
                .flat_map(|(_, pre)| pre.iter().filter_map(|p| resolve(p)))
                .collect()
        };
        let graph = Graph {
            deps: &deps,
            pre: &pre,
        };
        for name in names {
            let (path, _) = find(name)
                .ok_or_else(|| KernelError::NoModule(name.to_string(), self.version.clone()))?;
            visit(path, &graph, &mut seen, &mut ordered);
        }
        Ok(ordered
            .into_iter()
            .map(|m| self.modules_dir.join(m))
            .collect())
    }
}
