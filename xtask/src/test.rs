//! `cargo xtask test`: what CI runs. Builds every binary the end-to-end tests start, then
//! runs the whole test suite.

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    crate::cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    crate::cargo(&args)
}
