//! Generates the gRPC code for `proto/jobs/v1/jobs.proto` with the vendored
//! `protoc`, so a fresh machine needs nothing installed; and sets the cfg
//! `jobs_root` when the build runs as root.
//!
//! Root-only tests carry `#[cfg_attr(not(jobs_root), ignore = "needs root
//! …")]`: built by another user, the test runner lists each as ignored with
//! that reason (and `tests/zz_root_only.rs` says how many did not run);
//! built as root (CI), they all run.

use std::path::PathBuf;

/// The effective uid of this process, from `/proc/self/status` (the
/// second field of its `Uid:` line); `None` where there is no such file.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-check-cfg=cfg(jobs_root)");
    if effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=jobs_root");
    }
    // Cargo cannot watch the uid; switching user (su, sudo) changes these,
    // so the cfg is decided again. A build kept across a change anyway
    // fails its root-only tests loudly (`tests/common::require_root`) or is
    // caught by tests/zz_root_only.rs.
    for var in ["USER", "LOGNAME", "HOME", "SUDO_UID"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[PathBuf::from("proto/jobs/v1/jobs.proto")],
            &[PathBuf::from("proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
