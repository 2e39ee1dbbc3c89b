//! The CLI's error: what is printed on stderr before exiting with status 1.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Printed as is: daemon errors ("Error response from daemon: …"), the connection
    /// error, Docker's usage texts.
    Raw(String),
    /// A client-side error, printed as "Error: <message>".
    Msg(String),
}

pub type Result<T> = std::result::Result<T, CliError>;

impl CliError {
    pub fn msg(m: impl Into<String>) -> Self {
        CliError::Msg(m.into())
    }

    pub fn raw(m: impl Into<String>) -> Self {
        CliError::Raw(m.into())
    }

    /// An error status from the agent, with Docker's prefix.
    pub fn daemon(status: &tonic::Status) -> Self {
        let msg = if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
        CliError::Raw(format!("Error response from daemon: {msg}"))
    }

    /// Several errors (one per argument), one per line, as Docker joins them.
    pub fn join(errors: Vec<CliError>) -> Option<CliError> {
        if errors.is_empty() {
            return None;
        }
        Some(CliError::Raw(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        ))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Raw(m) => f.write_str(m),
            CliError::Msg(m) => write!(f, "Error: {m}"),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::daemon(&s)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Msg(e.to_string())
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::Msg(format!("cannot encode JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_carry_docker_prefix() {
        let s = tonic::Status::failed_precondition("This node is not a swarm manager.");
        assert_eq!(
            CliError::from(s).to_string(),
            "Error response from daemon: This node is not a swarm manager."
        );
        assert_eq!(CliError::msg("x").to_string(), "Error: x");
        let joined = CliError::join(vec![CliError::msg("a"), CliError::raw("b")]);
        assert_eq!(joined.map(|e| e.to_string()), Some("Error: a\nb".into()));
        assert_eq!(CliError::join(vec![]), None);
    }
}
