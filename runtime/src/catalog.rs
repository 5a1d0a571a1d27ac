//! Reading the plan catalog file; parsing and validation are `billing-model`'s.

use billing_model::{Catalog, CatalogError, CatalogProblem};
use std::path::Path;

/// Reads and validates the catalog file at `path`; errors name the file and the key.
pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
    let source_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CatalogError {
        source_name: source_name.clone(),
        key: String::new(),
        problem: CatalogProblem::Unreadable(e.to_string()),
    })?;
    Catalog::from_toml_str(&source_name, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_plans_file_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/plans.toml"));
        assert_eq!(load(path).unwrap().plans().len(), 3);
    }

    #[test]
    fn a_missing_file_is_reported_with_its_path() {
        let error = load(Path::new("/nonexistent/plans.toml")).unwrap_err();
        assert_eq!(error.source_name, "/nonexistent/plans.toml");
        assert!(matches!(error.problem, CatalogProblem::Unreadable(_)));
    }
}
