//! The binary refuses a broken configuration with a clear message.

use std::process::Command;

#[test]
fn a_malformed_setting_is_refused_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .env("CATGA_HTTP_ADDR", "not an address")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("CATGA_HTTP_ADDR"), "{text}");
}
