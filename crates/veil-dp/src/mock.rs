//! Synthetic rows drawn only from a manifest's declared domains: uniform within bounds,
//! uniform over categories. They carry no information about the real data, by
//! construction: this function never sees it.

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::manifest::{ColumnType, Manifest, format_date};

/// Most rows one mock request may ask for.
pub const MAX_MOCK_ROWS: usize = 1_000;

/// A synthetic value, typed like its column.
#[derive(Debug, Clone, PartialEq)]
pub enum MockValue {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Null,
}

/// `n` synthetic rows, columns in manifest order.
pub fn mock_rows(manifest: &Manifest, n: usize, rng: &mut impl Rng) -> Vec<Vec<MockValue>> {
    (0..n.min(MAX_MOCK_ROWS))
        .map(|i| {
            manifest
                .columns
                .iter()
                .map(|c| {
                    if c.nullable && rng.random_bool(0.05) {
                        return MockValue::Null;
                    }
                    match &c.ty {
                        ColumnType::Int { lo, hi } => MockValue::Int(rng.random_range(*lo..=*hi)),
                        ColumnType::Float { lo, hi } => {
                            let x: f64 = rng.random_range(*lo..=*hi);
                            MockValue::Float((x * 100.0).round() / 100.0)
                        }
                        ColumnType::Category { categories } => {
                            MockValue::Text(categories.choose(rng).cloned().unwrap_or_default())
                        }
                        ColumnType::Date { lo, hi } => {
                            MockValue::Text(format_date(rng.random_range(*lo..=*hi)))
                        }
                        ColumnType::Bool => MockValue::Bool(rng.random_bool(0.5)),
                        ColumnType::Id => MockValue::Text(format!("synthetic-{}", i + 1)),
                        ColumnType::Text => MockValue::Text(format!(
                            "synthetic-text-{}",
                            rng.random_range(1..=1000)
                        )),
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn stays_within_the_declared_domains_and_is_reproducible_per_seed() {
        let m = Manifest::parse(
            "[privacy]\nunit = \"row\"\n[columns.age]\ntype = \"int\"\nbounds = [18, 20]\n[columns.sex]\ntype = \"category\"\ncategories = [\"F\", \"M\"]\n[columns.d]\ntype = \"date\"\nbounds = [\"2020-01-01\", \"2020-01-03\"]",
        )
        .expect("manifest");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rows = mock_rows(&m, 200, &mut rng);
        assert_eq!(rows.len(), 200);
        for r in &rows {
            assert!(matches!(r[0], MockValue::Int(a) if (18..=20).contains(&a)));
            assert!(matches!(&r[1], MockValue::Text(s) if s == "F" || s == "M"));
            assert!(matches!(&r[2], MockValue::Text(s) if s.starts_with("2020-01-0")));
        }
        let again = mock_rows(&m, 200, &mut rand::rngs::StdRng::seed_from_u64(7));
        assert_eq!(rows, again);
        assert_eq!(mock_rows(&m, 5000, &mut rng).len(), MAX_MOCK_ROWS);
    }
}
