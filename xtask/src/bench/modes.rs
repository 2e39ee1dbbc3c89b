//! The modes of a connection benchmark (`lb`, `ingress`): their names, as `--modes` takes
//! them and the tables show them.

use anyhow::{bail, Context};

/// A mode of a connection benchmark (`lb`, `ingress`): one way to the servers, measured by
/// runs of the load generator of its own.
pub trait BenchMode: Copy + Eq + 'static {
    /// Every mode, in the order of the tables.
    const ALL: &'static [Self];

    /// As `--modes` takes it and the output shows it.
    fn name(self) -> &'static str;
}

/// The modes `--modes` names (each trimmed), in its order: at least one.
pub fn parse_modes<M: BenchMode>(names: &[String]) -> anyhow::Result<Vec<M>> {
    let all = M::ALL
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ");
    let modes = names
        .iter()
        .map(|s| {
            let s = s.trim();
            M::ALL
                .iter()
                .copied()
                .find(|m| m.name() == s)
                .with_context(|| format!("--modes: {s:?} is none of {all}"))
        })
        .collect::<anyhow::Result<Vec<M>>>()?;
    if modes.is_empty() {
        bail!("--modes: at least one of {all}");
    }
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum M {
        A,
        B,
    }

    impl BenchMode for M {
        const ALL: &'static [M] = &[M::A, M::B];

        fn name(self) -> &'static str {
            match self {
                M::A => "a",
                M::B => "b",
            }
        }
    }

    #[test]
    fn modes_from_the_command_line() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_modes::<M>(&names(&["b", " a"])).unwrap(),
            [M::B, M::A]
        );
        let e = parse_modes::<M>(&names(&["c"])).unwrap_err().to_string();
        assert_eq!(e, "--modes: \"c\" is none of a, b");
        let e = parse_modes::<M>(&[]).unwrap_err().to_string();
        assert_eq!(e, "--modes: at least one of a, b");
    }
}
