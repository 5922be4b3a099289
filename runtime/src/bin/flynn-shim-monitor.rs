//! The lean monitor of flynn-host's shims: a shim re-executes into this binary (when it
//! is installed beside the shim's own binary) once its container or exec'd process runs,
//! so that what supervises it for the rest of its life maps a small binary and none of
//! libcontainer. It only ever runs `runtime::shim::monitor_main`, whose code reaches
//! neither libcontainer, libseccomp nor tokio: the linker keeps none of them.

fn main() {
    std::process::exit(runtime::shim::monitor_main());
}
