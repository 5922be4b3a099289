//! Stands in for the agent binary in this crate's integration tests:
//! `flynn-shim-test shim <JOB_DIR>` is the shim entry point (`flynn-host shim`), and
//! `flynn-shim-test spawn <JOB_DIR>` plays a short-lived daemon that spawns and starts
//! the shim described by `<JOB_DIR>/shim.json`, prints `started <pid>` and exits.

use std::path::Path;

fn usage() -> ! {
    eprintln!("usage: flynn-shim-test shim|spawn <JOB_DIR>");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(cmd), Some(job_dir), None) = (args.next(), args.next(), args.next()) else {
        usage();
    };
    let job_dir = Path::new(&job_dir);
    match cmd.to_str() {
        // Before any thread exists, as the real binary does.
        Some("shim") => std::process::exit(runtime::shim::main(job_dir)),
        Some("spawn") => std::process::exit(spawn(job_dir)),
        _ => usage(),
    }
}

fn spawn(job_dir: &Path) -> i32 {
    let result = (|| -> Result<i32, String> {
        let data = std::fs::read(job_dir.join("shim.json")).map_err(|e| e.to_string())?;
        let cfg: runtime::shim::ShimConfig =
            serde_json::from_slice(&data).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let created = runtime::shim::spawn(&exe, job_dir, &cfg)
                .await
                .map_err(|e| e.to_string())?;
            created.start().await.map_err(|e| e.to_string())
        })
    })();
    match result {
        Ok(pid) => {
            println!("started {pid}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
