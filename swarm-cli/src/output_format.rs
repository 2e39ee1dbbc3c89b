//! `--format` of the commands that print objects: the table or JSON, nothing else.

use crate::error::{CliError, Result};

/// `--format`: the table (unset, "" or "table") or JSON ("json").
pub(crate) fn wants_json(f: &Option<String>) -> Result<bool> {
    match f.as_deref() {
        None | Some("") | Some("table") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(unsupported_format(other)),
    }
}

pub(crate) fn unsupported_format(f: &str) -> CliError {
    CliError::msg(format!(
        "unsupported format {f:?}: only \"table\" and \"json\" are supported"
    ))
}
