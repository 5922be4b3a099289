//! For other crates' tests (feature `testing`): a real etcd (Debian's `etcd-server`) on
//! 127.0.0.1, on ports of its own, for as long as the value lives.

use std::time::Duration;

use crate::Etcd;

pub struct TestEtcd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TestEtcd {
    /// Starts etcd; fails if it cannot be run (install `etcd-server`: scripts/deps.sh).
    pub fn start() -> std::io::Result<TestEtcd> {
        let (c, p) = (free_port()?, free_port()?);
        let dir = tempfile::tempdir()?;
        let url = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("d"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(TestEtcd {
            child,
            _dir: dir,
            url,
        })
    }

    /// A client, once etcd answers (10 s at most).
    pub async fn client(&self) -> Option<Etcd> {
        for _ in 0..100 {
            if let Ok(e) =
                Etcd::connect(std::slice::from_ref(&self.url), Duration::from_secs(2)).await
                && e.ping().await.is_ok()
            {
                return Some(e);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
