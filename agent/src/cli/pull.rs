//! `flynn-host pull`, and the pull `run` does for an image that is not local: sends
//! `POST /images/pull` (with the user's credentials from their Docker config) and shows
//! the NDJSON progress as one bar per layer on a terminal, or plain lines otherwise.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http_body_util::BodyExt;
use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Client;
use crate::model::{PullEvent, PullRequest};
use image::pull::LayerPhase;

/// Where progress goes: `pull` writes to stdout (as `docker pull`), `run` to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

impl Output {
    fn is_terminal(self) -> bool {
        match self {
            Output::Stdout => std::io::stdout().is_terminal(),
            Output::Stderr => std::io::stderr().is_terminal(),
        }
    }

    fn line(self, text: &str) {
        // A closed pipe is not worth failing the pull for.
        let _ = match self {
            Output::Stdout => writeln!(std::io::stdout(), "{text}"),
            Output::Stderr => writeln!(std::io::stderr(), "{text}"),
        };
    }

    fn target(self) -> ProgressDrawTarget {
        match self {
            Output::Stdout => ProgressDrawTarget::stdout(),
            Output::Stderr => ProgressDrawTarget::stderr(),
        }
    }
}

/// `flynn-host pull REF`.
pub async fn pull(client: &Client, reference: &str, platform: Option<&str>) -> Result<i32> {
    pull_image(client, reference, platform, Output::Stdout).await?;
    Ok(0)
}

/// Pulls `reference` through the daemon, showing progress on `out`.
pub async fn pull_image(
    client: &Client,
    reference: &str,
    platform: Option<&str>,
    out: Output,
) -> Result<()> {
    let request = PullRequest {
        reference: reference.to_string(),
        platform: platform.map(str::to_string),
        auth: credentials(reference),
    };
    let response = client
        .send_json(Method::POST, "/images/pull", Some(&request))
        .await?;
    let mut body = response.into_body();
    let mut view = View::new(out, reference);
    let mut pending = Vec::new();
    let mut finished = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the daemon's pull stream broke")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: PullEvent = serde_json::from_slice(&line).with_context(|| {
                format!(
                    "the daemon sent a pull event that is not the JSON expected: {}",
                    String::from_utf8_lossy(&line)
                )
            })?;
            match event {
                PullEvent::Error { error } => {
                    view.abandon();
                    return Err(anyhow!("{error}"));
                }
                PullEvent::Done { .. } => {
                    finished = true;
                    view.show(&event);
                }
                other => view.show(&other),
            }
        }
    }
    if !finished {
        view.abandon();
        return Err(anyhow!(
            "the daemon ended the pull stream before the pull finished; run the pull again"
        ));
    }
    Ok(())
}

/// The user's credentials for the reference's registry, from their Docker config.
fn credentials(reference: &str) -> Option<image::registry::Credentials> {
    let reference = reference.parse::<image::Reference>().ok()?;
    match image::registry::DockerConfig::load_default() {
        Ok(config) => config.credentials_for(reference.domain()),
        Err(e) => {
            eprintln!("flynn-host: warning: {e}; pulling without credentials");
            None
        }
    }
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// What the user sees: bars on a terminal, lines otherwise.
struct View {
    out: Output,
    reference: String,
    bars: Option<MultiProgress>,
    layers: HashMap<String, Layer>,
}

struct Layer {
    bar: Option<ProgressBar>,
    phase: Option<LayerPhase>,
}

impl View {
    fn new(out: Output, reference: &str) -> View {
        let bars = out
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(out.target()));
        View {
            out,
            reference: reference.to_string(),
            bars,
            layers: HashMap::new(),
        }
    }

    fn println(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => self.out.line(text),
        }
    }

    fn show(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Resolved {
                reference, layers, ..
            } => {
                let (repo, what) = split_reference(reference);
                self.println(&format!("{what}: Pulling from {repo}"));
                for layer in layers {
                    let bar = self.bars.as_ref().map(|bars| {
                        let bar = bars.add(ProgressBar::new(layer.size));
                        bar.set_style(waiting_style());
                        bar.set_prefix(short(&layer.digest));
                        bar.set_message("Waiting");
                        bar
                    });
                    self.layers
                        .insert(layer.digest.clone(), Layer { bar, phase: None });
                }
            }
            PullEvent::Layer {
                digest,
                phase,
                current,
                total,
                message,
            } => self.layer(digest, *phase, *current, *total, message.as_deref()),
            PullEvent::Done {
                digest, downloaded, ..
            } => {
                // Every bar keeps its last line on screen; what follows goes below them.
                for layer in self.layers.values_mut() {
                    if let Some(bar) = layer.bar.take()
                        && !bar.is_finished()
                    {
                        bar.finish();
                    }
                }
                self.bars = None;
                let name = self
                    .reference
                    .parse::<image::Reference>()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| self.reference.clone());
                let familiar = super::images::familiar(&name);
                self.println(&format!("Digest: {digest}"));
                if *downloaded {
                    self.println(&format!("Status: Downloaded newer image for {familiar}"));
                } else {
                    self.println(&format!("Status: Image is up to date for {familiar}"));
                }
                self.println(&name);
            }
            PullEvent::Error { .. } => {}
        }
    }

    fn layer(
        &mut self,
        digest: &str,
        phase: LayerPhase,
        current: u64,
        total: u64,
        message: Option<&str>,
    ) {
        let plain = self.bars.is_none();
        let out = self.out;
        let Some(layer) = self.layers.get_mut(digest) else {
            return;
        };
        let changed = layer.phase != Some(phase);
        layer.phase = Some(phase);
        let id = short(digest);
        if plain {
            let text = match phase {
                LayerPhase::Waiting => "Waiting".to_string(),
                LayerPhase::Downloading => "Downloading".to_string(),
                LayerPhase::Resuming => format!("Resuming ({})", message.unwrap_or("")),
                LayerPhase::Done => "Pull complete".to_string(),
                LayerPhase::Exists => "Already exists".to_string(),
            };
            if changed || phase == LayerPhase::Resuming {
                out.line(&format!("{id}: {text}"));
            }
            return;
        }
        let Some(bar) = &layer.bar else {
            return;
        };
        match phase {
            LayerPhase::Waiting => bar.set_message("Waiting"),
            LayerPhase::Downloading | LayerPhase::Resuming => {
                if changed {
                    bar.set_style(download_style());
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
                bar.set_length(total);
                bar.set_position(current);
                bar.set_message(if phase == LayerPhase::Resuming {
                    "Resuming"
                } else {
                    "Downloading"
                });
            }
            LayerPhase::Done => {
                bar.set_style(finished_style());
                bar.finish_with_message("Pull complete");
            }
            LayerPhase::Exists => {
                bar.set_style(finished_style());
                bar.finish_with_message("Already exists");
            }
        }
    }

    fn abandon(&self) {
        for layer in self.layers.values() {
            if let Some(bar) = &layer.bar
                && !bar.is_finished()
            {
                bar.abandon();
            }
        }
    }
}

/// `docker.io/library/busybox:latest` -> (`library/busybox`, `latest`).
fn split_reference(reference: &str) -> (String, String) {
    match reference.parse::<image::Reference>() {
        Ok(r) => {
            let what = match (r.digest(), r.tag()) {
                (Some(d), _) => d.to_string(),
                (None, Some(t)) => t.to_string(),
                (None, None) => "latest".to_string(),
            };
            let repo = if r.domain() == image::registry::DOCKER_HUB {
                r.path().to_string()
            } else {
                r.repository()
            };
            (repo, what)
        }
        Err(_) => (reference.to_string(), "latest".to_string()),
    }
}

fn waiting_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn finished_style() -> ProgressStyle {
    waiting_style()
}

fn download_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix}: {msg:<11} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_as_docker_prints_them() {
        assert_eq!(
            split_reference("docker.io/library/busybox:latest"),
            ("library/busybox".to_string(), "latest".to_string())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/a/b:1"),
            ("127.0.0.1:5000/a/b".to_string(), "1".to_string())
        );
        assert_eq!(short("sha256:0123456789abcdef0123"), "0123456789ab");
    }
}
