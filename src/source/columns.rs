//! Which columns of a key file (CSV or workbook) hold the key and the customer reference:
//! found by name in the header row, `payer_id` or `PCD_PAYER_ID` unless named otherwise.

use serde::{Deserialize, Serialize};

/// The key column's names when none is given; compared without case.
pub const DEFAULT_ID: [&str; 2] = ["payer_id", "pcd_payer_id"];
/// The reference column's name when none is given (optional in the file).
pub const DEFAULT_REF: &str = "customer_ref";

/// The header names of a file's key and reference columns (`--id-column`, `--ref-column`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnNames {
    /// `None`: `payer_id` or `PCD_PAYER_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "RefColumn::is_default")]
    pub reference: RefColumn,
}

/// Where the customer reference comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefColumn {
    /// `customer_ref` if the header has it; no reference otherwise.
    #[default]
    Default,
    /// This column, which the header must have.
    Named(String),
    /// No reference (`--ref-column none`).
    None,
}

impl RefColumn {
    pub fn is_default(&self) -> bool {
        *self == Self::Default
    }
}

impl ColumnNames {
    /// From `--id-column` and `--ref-column` (`none`: no reference); a blank name is
    /// refused with the flag's name.
    pub fn from_flags(
        id: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let blank = |flag: &'static str| (flag, "a header name cannot be blank".to_owned());
        let id = match id.map(str::trim) {
            Some("") => return Err(blank("--id-column")),
            other => other.map(str::to_owned),
        };
        let reference = match reference.map(str::trim) {
            None => RefColumn::Default,
            Some("none") => RefColumn::None,
            Some("") => return Err(blank("--ref-column")),
            Some(name) => RefColumn::Named(name.to_owned()),
        };
        Ok(Self { id, reference })
    }

    /// Whether nothing was named.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Where the two columns are, counted from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub id: usize,
    pub reference: Option<usize>,
}

/// A header without a column that was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {wanted} column in the header (found: {found})")]
pub struct MissingColumn {
    /// The name (or names) looked for, and the flag that named it.
    pub wanted: String,
    /// The header's names, quoted, the first ten.
    pub found: String,
}

/// A header name as compared: a BOM and surrounding spaces dropped, lower case.
fn normalize(name: &str) -> String {
    name.trim_start_matches('\u{feff}').trim().to_lowercase()
}

impl ColumnNames {
    /// Finds the columns in `header` (the first row's cells as text).
    pub fn find(&self, header: &[&str]) -> Result<Positions, MissingColumn> {
        let names: Vec<String> = header.iter().map(|n| normalize(n)).collect();
        let position = |wanted: &str| names.iter().position(|n| *n == normalize(wanted));
        let missing = |wanted: String| MissingColumn {
            wanted,
            found: header
                .iter()
                .map(|n| format!("{:?}", n.trim().chars().take(40).collect::<String>()))
                .take(10)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let id = match &self.id {
            Some(name) => {
                position(name).ok_or_else(|| missing(format!("{name:?} (--id-column)")))?
            }
            None => names
                .iter()
                .position(|n| DEFAULT_ID.contains(&n.as_str()))
                .ok_or_else(|| missing("`payer_id` (or `PCD_PAYER_ID`)".to_owned()))?,
        };
        let reference = match &self.reference {
            RefColumn::Default => position(DEFAULT_REF),
            RefColumn::Named(name) => {
                Some(position(name).ok_or_else(|| missing(format!("{name:?} (--ref-column)")))?)
            }
            RefColumn::None => None,
        };
        Ok(Positions { id, reference })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(id: Option<&str>, reference: RefColumn) -> ColumnNames {
        ColumnNames {
            id: id.map(str::to_owned),
            reference,
        }
    }

    #[test]
    fn default_names_any_case_spaces_and_bom() {
        let found = |h: &[&str]| ColumnNames::default().find(h);
        assert_eq!(
            found(&["\u{feff}Payer_ID ", "customer_ref"]),
            Ok(Positions {
                id: 0,
                reference: Some(1)
            })
        );
        assert_eq!(
            found(&["고객번호", " pcd_payer_id"]),
            Ok(Positions {
                id: 1,
                reference: None
            })
        );
        assert_eq!(found(&["PCD_PAYER_ID"]).map(|p| p.id), Ok(0));
        let e = found(&["고객번호", "빌링키"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no `payer_id` (or `PCD_PAYER_ID`) column in the header (found: \"고객번호\", \"빌링키\")"
        );
    }

    #[test]
    fn named_columns_hangul_included() {
        let names = named(Some("빌링키"), RefColumn::Named("고객번호".into()));
        assert_eq!(
            names.find(&["고객번호", " 빌링키 ", "payer_id"]),
            Ok(Positions {
                id: 1,
                reference: Some(0)
            })
        );
        // A named reference column must be there; `none` reads no reference.
        let e = names.find(&["빌링키"]).unwrap_err();
        assert!(e.wanted.contains("--ref-column"), "{e}");
        let none = named(None, RefColumn::None);
        assert_eq!(
            none.find(&["payer_id", "customer_ref"])
                .map(|p| p.reference),
            Ok(None)
        );
        let e = named(Some("key"), RefColumn::Default)
            .find(&["payer_id"])
            .unwrap_err();
        assert!(
            e.to_string().starts_with("no \"key\" (--id-column) column"),
            "{e}"
        );
    }
}
