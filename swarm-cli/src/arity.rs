//! Docker's check of how many positional arguments a command got (cli/required.go): run
//! before connecting, its error exits with status 1.

use crate::error::{CliError, Result};

/// How many positional arguments a command takes.
#[derive(Debug, Clone, Copy)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "argument"
    } else {
        "arguments"
    }
}

/// Docker's argument-count error (cli/required.go), exit status 1.
pub fn check_args(path: &str, usage: &str, arity: Arity, got: usize) -> Result<()> {
    let (ok, text) = match arity {
        Arity::Exactly(n) => (
            got == n,
            format!(
                "swarm: '{path}' requires {n} {}\n\nUsage:  {usage}\n\nRun '{path} --help' for more information",
                plural(n)
            ),
        ),
        Arity::AtLeast(n) => (
            got >= n,
            format!(
                "swarm: '{path}' requires at least {n} {}\n\nUsage:  {usage}\n\nSee '{path} --help' for more information",
                plural(n)
            ),
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(CliError::raw(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_count_errors_read_like_docker() {
        let e = check_args(
            "swarm service create",
            "swarm service create [OPTIONS] IMAGE [COMMAND] [ARG...]",
            Arity::AtLeast(1),
            0,
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "swarm: 'swarm service create' requires at least 1 argument\n\nUsage:  swarm service create [OPTIONS] IMAGE [COMMAND] [ARG...]\n\nSee 'swarm service create --help' for more information"
            )
        );
        assert!(check_args("swarm join", "u", Arity::Exactly(1), 1).is_ok());
        assert!(check_args("swarm join", "u", Arity::Exactly(1), 2).is_err());
    }
}
