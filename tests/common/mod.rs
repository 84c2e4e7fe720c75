//! The shared harness lives in the library (`latch::testing`, feature
//! `test-util`), so benches use it too.
// Each test binary uses part of it.
#![allow(unused_imports, dead_code)]

pub use latch::testing::*;

/// `latch audit verify` (the binary) on `latch`'s store must pass.
pub fn assert_audit_verifies(latch: &TestLatch) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_latch"))
        .envs(&latch.env)
        .args(["audit", "verify", "--config"])
        .arg(latch.config_path())
        .output()
        .unwrap();
    assert_success(&out);
}

/// A finished command must have succeeded; if not, its output says why.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
