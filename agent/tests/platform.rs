//! The `flynn` CLI (this binary under that name) against a real controller process and
//! a real etcd: clusters, apps, releases, env, rollback, routes, and bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)]

use std::process::{Command, Output};
use std::time::Duration;

use discovery::testing::TestEtcd;

const BIN: &str = env!("CARGO_BIN_EXE_flynn-host");
const KEY: &str = "platform-test-key-0123456789";

struct Env {
    dir: tempfile::TempDir,
    controller: std::process::Child,
    url: String,
    _etcd: TestEtcd,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}

impl Env {
    fn start() -> Env {
        let etcd = TestEtcd::start().expect("etcd (Debian's etcd-server): scripts/deps.sh");
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, dir.path().join("flynn")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let controller = Command::new(BIN)
            .args([
                "controller",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--etcd",
                &etcd.url,
            ])
            .env("FLYNN_CONTROLLER_KEY", KEY)
            .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
            .spawn()
            .unwrap();
        let env = Env {
            dir,
            controller,
            url,
            _etcd: etcd,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(env.url.trim_start_matches("http://")).is_ok() {
                return env;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the controller did not start");
    }

    fn flynn(&self, args: &[&str]) -> Output {
        Command::new(self.dir.path().join("flynn"))
            .args(args)
            .env("FLYNNRC", self.dir.path().join("flynnrc"))
            .env_remove("FLYNN_APP")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.flynn(args);
        assert!(
            out.status.success(),
            "flynn {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.flynn(args);
        assert!(!out.status.success(), "flynn {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn flynn_cli_drives_the_controller() {
    let e = Env::start();
    assert!(e.err(&["apps"]).contains("flynn cluster add"));
    e.ok(&["cluster", "add", "default", &e.url, KEY]);
    assert!(e.ok(&["cluster", "list"]).contains("(default)"));
    let mode = std::fs::metadata(e.dir.path().join("flynnrc")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    assert!(e.ok(&["create", "demo"]).contains("Created demo"));
    assert!(e.err(&["create", "demo"]).contains("exists"));
    assert!(e.ok(&["apps"]).contains("demo"));
    assert!(e.err(&["info"]).contains("-a APP"));
    e.ok(&[
        "-a",
        "demo",
        "release",
        "add",
        "busybox",
        "--process",
        "web=httpd -f -p $PORT -h /www",
    ]);
    let info = e.ok(&["-a", "demo", "info"]);
    assert!(info.contains("image:    busybox"), "{info}");
    e.ok(&["-a", "demo", "env", "set", "GREETING=hi"]);
    assert_eq!(e.ok(&["-a", "demo", "env", "get", "GREETING"]), "hi\n");
    assert!(
        e.ok(&["-a", "demo", "release", "rollback"])
            .contains("Rolled back")
    );
    assert!(
        e.err(&["-a", "demo", "env", "get", "GREETING"])
            .contains("not set")
    );
    assert_eq!(e.ok(&["-a", "demo", "release", "list"]).lines().count(), 3);
    e.ok(&[
        "-a",
        "demo",
        "route",
        "add",
        "http",
        "www.example.com",
        "--path",
        "/api",
    ]);
    let routes = e.ok(&["-a", "demo", "route"]);
    assert!(
        routes.contains("demo.cluster.local") && routes.contains("www.example.com/api"),
        "{routes}"
    );
    assert!(
        e.err(&["-a", "demo", "route", "add", "udp"])
            .contains("http or tcp")
    );
    assert!(
        e.err(&["-a", "demo", "env", "set", "NOEQUALS"])
            .contains("KEY=VALUE")
    );
    assert!(e.err(&["--no-such-flag"]).contains("unexpected argument"));
    assert!(e.err(&["delete", "demo"]).contains("--yes"));
    e.ok(&["delete", "demo", "--yes"]);
    assert!(!e.ok(&["apps"]).contains("demo"));
    // A wrong key is refused with what to do.
    e.ok(&[
        "cluster",
        "add",
        "bad",
        &e.url,
        "wrong-key-0123456789",
        "--default",
    ]);
    assert!(e.err(&["apps"]).contains("controller key"));
}
