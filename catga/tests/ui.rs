//! Compile-fail tests of the macros' error messages.
//!
//! Compiler output changes between Rust releases, so the expected `.stderr`
//! files are pinned to one toolchain (`PINNED`); on another, the test says so
//! and checks nothing. Update with `TRYBUILD=overwrite cargo test -p catga --test ui`.

const PINNED: &str = "rustc 1.95.";

#[test]
fn ui() {
    let version = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !version.starts_with(PINNED) {
        eprintln!("skipping UI tests: they are pinned to {PINNED}x, this is {version}");
        return;
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
