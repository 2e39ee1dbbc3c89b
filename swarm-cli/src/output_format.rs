//! The error of a `--format` a command does not take (`swarm info`: table or JSON only; the
//! `ls`/`ps`/`inspect` commands take Go templates, see `template`).

use crate::error::CliError;

pub(crate) fn unsupported_format(f: &str) -> CliError {
    CliError::msg(format!(
        "unsupported format {f:?}: only \"table\" and \"json\" are supported"
    ))
}
