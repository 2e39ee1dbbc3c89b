//! What a volume mount may say, checked alike by the managers (at create/update) and by the
//! agent (before it makes a path of the name): the local driver's volume names and options.

/// The only volume driver: a directory on the node.
pub const LOCAL_DRIVER: &str = "local";

/// Docker's local driver names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, so that a name is one path
/// component (never `..`, never a slash).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() < 2 {
        return Err(format!(
            "volume name {name:?} is too short, names should be at least two alphanumeric characters"
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "{name:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use type=bind with an absolute path"
        ));
    }
    Ok(())
}

/// The driver must be the local one (or unset) and take no options: options of the local
/// driver (`type`, `device`, `o` — mounting a filesystem as the volume) are not supported
/// here, and an option that would be ignored is refused instead.
pub fn check_driver<'a>(
    driver: &str,
    mut options: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    if !driver.is_empty() && driver != LOCAL_DRIVER {
        return Err(format!(
            "volume driver {driver:?} is not supported: only the \"local\" driver is (leave volume-driver unset)"
        ));
    }
    if let Some(k) = options.next() {
        return Err(format!(
            "volume option {k:?} is not supported: the local driver here keeps volumes as directories on the node and takes no volume-opt (type, device, o)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_local_driver() {
        for ok in ["db", "app_data", "a.b-c", "0x"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        assert!(check_name("a").unwrap_err().contains("too short"));
        for bad in ["..", "../etc", "a/b", "/srv/x", "_x", ".x", "a b"] {
            assert!(
                check_name(bad).unwrap_err().contains("invalid characters"),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_the_local_driver_without_options() {
        let none: Vec<String> = vec![];
        assert_eq!(check_driver("", none.iter()), Ok(()));
        assert_eq!(check_driver("local", none.iter()), Ok(()));
        assert!(check_driver("nfs", none.iter())
            .unwrap_err()
            .contains("\"nfs\" is not supported"));
        let opts = ["type".to_string()];
        assert!(check_driver("local", opts.iter())
            .unwrap_err()
            .contains("volume option \"type\" is not supported"));
    }
}
