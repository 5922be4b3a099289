//! Stands in for `flynn-host shim <JOB_DIR>` in this crate's integration tests.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(cmd), Some(job_dir), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: flynn-shim-test shim <JOB_DIR>");
        std::process::exit(2);
    };
    if cmd != "shim" {
        eprintln!("usage: flynn-shim-test shim <JOB_DIR>");
        std::process::exit(2);
    }
    std::process::exit(runtime::shim::main(std::path::Path::new(&job_dir)));
}
