//! Helpers the integration tests share: paths to fixtures, the binary under
//! test (with `SHRINKRAY_ISA` cleared, so each test picks its kernels), its
//! JSON output, and directory listings.
#![allow(dead_code)] // each test file uses the helpers it needs

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

/// A file or directory under `fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The `shrinkray` binary, without an inherited `SHRINKRAY_ISA`.
pub fn shrinkray() -> Command {
    let mut c = Command::cargo_bin("shrinkray").expect("binary built");
    c.env_remove("SHRINKRAY_ISA");
    c
}

/// Stdout parsed as JSON.
pub fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out).expect("stdout is JSON")
}

/// Files in `dir`, sorted (to check that nothing, not even a temporary, was left).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Runs `quantize --json INPUT -o OUT EXTRA…`, asserts success, and returns the report.
pub fn quantize_json(input: &Path, out: &Path, extra: &[&str]) -> Value {
    let run = shrinkray()
        .args(["quantize", "--json"])
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(extra)
        .assert()
        .success();
    json(&run.get_output().stdout)
}
