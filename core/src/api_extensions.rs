//! The API extension registry (SPEC §11.4): the built-in names followed by the application's.

use crate::{Error, Result};

/// The extensions every member of this release has, in order, before the application's own.
pub const INTERNAL_EXTENSIONS: [&str; 2] = [
    "internal:runtime_extension_v1",
    "internal:rename_core_endpoints",
];

/// Checks a name against `^[a-z0-9]+(_[a-z0-9]+)*$`.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('_').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Builds the full registry from the application's extension names, validating each.
///
/// ```
/// let all = microcluster::api_extensions::registry(&["custom_extension_a_0".into()]).unwrap();
/// assert_eq!(all.len(), 3);
/// assert!(microcluster::api_extensions::registry(&["Bad".into()]).is_err());
/// ```
pub fn registry(external: &[String]) -> Result<Vec<String>> {
    let mut all: Vec<String> = INTERNAL_EXTENSIONS.iter().map(|s| s.to_string()).collect();
    for name in external {
        if !is_valid_name(name) {
            return Err(Error::invalid(format!(
                "External extension name {name:?} is invalid: Extension name must contain only \
                 lowercase letters and underscores, and must not begin or end with an underscore"
            )));
        }
        if all.contains(name) {
            return Err(Error::invalid(format!(
                "Extension {name:?} already registered"
            )));
        }
        all.push(name.clone());
    }
    Ok(all)
}

/// Checks that two registries are exactly equal, in order (SPEC §11.4).
pub fn compare(source: &[String], target: &[String]) -> Result<()> {
    if source.len() != target.len() {
        return Err(Error::invalid(format!(
            "The source ({}) and target ({}) registries have different number of extensions",
            source.len(),
            target.len()
        )));
    }
    if source != target {
        return Err(Error::invalid(
            "The source and target registries have different extensions",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_compare_by_exact_order() {
        let a = registry(&["x".into(), "y".into()]).unwrap();
        let b = registry(&["y".into(), "x".into()]).unwrap();
        let c = registry(&["x".into()]).unwrap();
        assert!(compare(&a, &a).is_ok());
        assert_eq!(
            compare(&a, &b).unwrap_err().message(),
            "The source and target registries have different extensions"
        );
        assert_eq!(
            compare(&a, &c).unwrap_err().message(),
            "The source (4) and target (3) registries have different number of extensions"
        );
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", "_a", "a_", "a__b", "A", "a-b", "internal:x"] {
            let err = registry(&[bad.to_string()]).unwrap_err();
            assert!(
                err.message().starts_with("External extension name"),
                "{bad:?}: {err}"
            );
        }
        let err = registry(&["a".into(), "a".into()]).unwrap_err();
        assert_eq!(err.message(), "Extension \"a\" already registered");
        let all = registry(&["a_1".into(), "b".into()]).unwrap();
        assert_eq!(all[..2], INTERNAL_EXTENSIONS.map(String::from));
        assert_eq!(all[2..], ["a_1".to_string(), "b".to_string()]);
    }
}
