//! `cargo xtask test`: what CI runs. Installs what the build and the tests need when it is
//! missing ([`crate::setup`]), builds every binary the end-to-end tests start and the static
//! whoami binary of the lab's test images, then runs the whole suite.

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    crate::setup::ensure()?;
    crate::workspace::cargo(&["build", "--workspace", "--bins"])?;
    // The lab tests make their `whoami` image from the static musl binary; a test must not run
    // cargo itself (the test run holds the build lock), so it is built here, by the full xtask.
    crate::workspace::cargo(&[
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--features",
        "lab",
        "--",
        "images",
        "build",
    ])?;
    // xtask's own tests (the benchmarks' pure parts) need its full feature set.
    let mut args = vec![
        "test",
        "--workspace",
        "--no-fail-fast",
        "--features",
        "xtask/lab",
    ];
    args.extend(extra.iter().map(String::as_str));
    crate::workspace::cargo(&args)
}
