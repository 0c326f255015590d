//! Sets `cfg(root_tests)` when the tests are built as root (effective uid 0),
//! so root-only tests (network namespaces, TAP devices) run there and are
//! shown as ignored elsewhere: each such test carries
//! `#[cfg_attr(not(root_tests), ignore = "needs root: ...")]`.
//!
//! The crates with root-only tests share this script (`build = ` in their
//! Cargo.toml). It runs again when it changes or the user does (`USER`,
//! `SUDO_UID`), so a tree built without root and then tested as root (or
//! the other way) gets the right answer.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(root_tests)");
    println!("cargo:rerun-if-env-changed=USER");
    println!("cargo:rerun-if-env-changed=SUDO_UID");
    // `Uid:` lists the real, effective, saved and filesystem uids.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if euid == Some("0") {
        println!("cargo:rustc-cfg=root_tests");
    }
}
