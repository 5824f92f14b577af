//! The dataset schema manifest (TOML): privacy unit, column types, public bounds and
//! categories. Everything the DP engine assumes about the data comes from here, never from
//! the data itself, so these values must be public knowledge set by the data owner.

use std::collections::BTreeSet;

use serde::Deserialize;

/// The most rows one privacy unit may contribute (`unit = { column, max_rows }`).
pub const MAX_ROWS_PER_UNIT: u32 = 1_000;
/// The most declared categories per column.
pub const MAX_CATEGORIES: usize = 10_000;
pub const MAX_COLUMNS: usize = 256;
/// Larger than any sane bound; keeps fixed-point arithmetic far from overflow.
pub const MAX_ABS_BOUND: f64 = 1e15;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid schema manifest: {0}")]
pub struct ManifestError(pub String);

fn err(msg: impl Into<String>) -> ManifestError {
    ManifestError(msg.into())
}

/// Who is protected: one row, or everything one identifier owns (up to `max_rows` rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivacyUnit {
    Row,
    Id { column: String, max_rows: u32 },
}

impl PrivacyUnit {
    /// How many rows one unit can add or remove: the d_in of every measurement.
    pub fn rows_per_unit(&self) -> u32 {
        match self {
            PrivacyUnit::Row => 1,
            PrivacyUnit::Id { max_rows, .. } => *max_rows,
        }
    }
}

/// A day as days since 1970-01-01 (what Arrow's Date32 stores).
pub type Day = i32;

#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    Int {
        lo: i64,
        hi: i64,
    },
    Float {
        lo: f64,
        hi: f64,
    },
    Category {
        categories: Vec<String>,
    },
    Date {
        lo: Day,
        hi: Day,
    },
    Bool,
    /// The privacy-unit identifier: never aggregated, never grouped, never shown.
    Id,
    /// Free text with no public domain: groupable only with a thresholded release.
    Text,
}

impl ColumnType {
    pub fn name(&self) -> &'static str {
        match self {
            ColumnType::Int { .. } => "int",
            ColumnType::Float { .. } => "float",
            ColumnType::Category { .. } => "category",
            ColumnType::Date { .. } => "date",
            ColumnType::Bool => "bool",
            ColumnType::Id => "id",
            ColumnType::Text => "text",
        }
    }

    /// Numeric bounds as floats, for int, float and date columns.
    pub fn numeric_bounds(&self) -> Option<(f64, f64)> {
        match *self {
            ColumnType::Int { lo, hi } => Some((lo as f64, hi as f64)),
            ColumnType::Float { lo, hi } => Some((lo, hi)),
            ColumnType::Date { lo, hi } => Some((f64::from(lo), f64::from(hi))),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub description: String,
    pub unit: PrivacyUnit,
    /// In declaration order (the order of the TOML tables).
    pub columns: Vec<Column>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    description: String,
    privacy: RawPrivacy,
    columns: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    unit: toml::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    column: String,
    max_rows: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    #[serde(rename = "type")]
    ty: String,
    bounds: Option<toml::Value>,
    categories: Option<Vec<String>>,
    #[serde(default)]
    nullable: bool,
    #[serde(default)]
    description: String,
}

/// Validates a column or dataset name: lowercase letters, digits and `_`, starting with a
/// letter, at most 64 characters (safe to quote in SQL and to show anywhere).
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<Day> {
    let mut parts = s.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    i32::try_from(days_from_civil(y, m, d)).ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Howard Hinnant's `days_from_civil`: proleptic Gregorian date → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The first day of the month containing `day` (proleptic Gregorian). The executor's date
/// buckets and the planner's list of bucket keys both come from here, so they agree for every
/// date a manifest allows (years 1 to 9999).
pub fn month_start(day: Day) -> Day {
    let (y, m, _) = civil_from_days(i64::from(day));
    saturating_day(days_from_civil(y, m, 1))
}

/// The first day of the year containing `day` (see [`month_start`]).
pub fn year_start(day: Day) -> Day {
    let (y, _, _) = civil_from_days(i64::from(day));
    saturating_day(days_from_civil(y, 1, 1))
}

fn saturating_day(x: i64) -> Day {
    Day::try_from(x).unwrap_or(if x < 0 { Day::MIN } else { Day::MAX })
}

pub fn format_date(day: Day) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

fn bounds_pair(name: &str, v: &toml::Value) -> Result<(toml::Value, toml::Value), ManifestError> {
    match v.as_array().map(Vec::as_slice) {
        Some([lo, hi]) => Ok((lo.clone(), hi.clone())),
        _ => Err(err(format!("column {name}: bounds must be [low, high]"))),
    }
}

fn as_f64(v: &toml::Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| err(e.message().to_string()))?;
        if raw.columns.is_empty() {
            return Err(err("declare at least one column under [columns.<name>]"));
        }
        if raw.columns.len() > MAX_COLUMNS {
            return Err(err(format!("at most {MAX_COLUMNS} columns")));
        }
        let mut columns = Vec::with_capacity(raw.columns.len());
        for (name, value) in raw.columns {
            if !valid_identifier(&name) {
                return Err(err(format!(
                    "column name {name:?}: use lowercase letters, digits and _, starting with a letter"
                )));
            }
            let rc: RawColumn = value
                .try_into()
                .map_err(|e: toml::de::Error| err(format!("column {name}: {}", e.message())))?;
            columns.push(Self::parse_column(name, rc)?);
        }
        // toml::Table keeps keys sorted unless `preserve_order` is on; either way the order is
        // deterministic, which is all the file layout needs.
        let unit = match raw.privacy.unit {
            toml::Value::String(s) if s == "row" => PrivacyUnit::Row,
            toml::Value::String(other) => {
                return Err(err(format!(
                    "privacy.unit {other:?}: use \"row\" or {{ column = \"…\", max_rows = N }}"
                )));
            }
            table @ toml::Value::Table(_) => {
                let u: RawUnit = table
                    .try_into()
                    .map_err(|e: toml::de::Error| err(format!("privacy.unit: {}", e.message())))?;
                if !(1..=MAX_ROWS_PER_UNIT).contains(&u.max_rows) {
                    return Err(err(format!(
                        "privacy.unit.max_rows must be between 1 and {MAX_ROWS_PER_UNIT}"
                    )));
                }
                match columns.iter().find(|c| c.name == u.column) {
                    Some(c) if c.ty == ColumnType::Id && !c.nullable => {}
                    Some(_) => {
                        return Err(err(format!(
                            "privacy.unit.column {:?} must be declared with type = \"id\" (not nullable)",
                            u.column
                        )));
                    }
                    None => {
                        return Err(err(format!(
                            "privacy.unit.column {:?} is not a declared column",
                            u.column
                        )));
                    }
                }
                PrivacyUnit::Id {
                    column: u.column,
                    max_rows: u.max_rows,
                }
            }
            _ => return Err(err("privacy.unit must be \"row\" or a table")),
        };
        if unit == PrivacyUnit::Row && columns.iter().any(|c| c.ty == ColumnType::Id) {
            return Err(err(
                "an id column needs privacy.unit = { column = \"…\", max_rows = N }",
            ));
        }
        if columns.iter().filter(|c| c.ty == ColumnType::Id).count() > 1 {
            return Err(err("at most one id column"));
        }
        Ok(Self {
            description: raw.description,
            unit,
            columns,
        })
    }

    fn parse_column(name: String, rc: RawColumn) -> Result<Column, ManifestError> {
        let need_no = |what: &str, present: bool| {
            if present {
                Err(err(format!(
                    "column {name}: type {} takes no {what}",
                    rc.ty
                )))
            } else {
                Ok(())
            }
        };
        let ty = match rc.ty.as_str() {
            "int" => {
                need_no("categories", rc.categories.is_some())?;
                let b = rc.bounds.as_ref().ok_or_else(|| {
                    err(format!("column {name}: an int needs bounds = [low, high]"))
                })?;
                let (lo, hi) = bounds_pair(&name, b)?;
                let (Some(lo), Some(hi)) = (lo.as_integer(), hi.as_integer()) else {
                    return Err(err(format!("column {name}: int bounds must be integers")));
                };
                if lo >= hi
                    || lo.unsigned_abs() as f64 > MAX_ABS_BOUND
                    || hi.unsigned_abs() as f64 > MAX_ABS_BOUND
                {
                    return Err(err(format!(
                        "column {name}: bounds must satisfy low < high and |bound| <= 1e15"
                    )));
                }
                ColumnType::Int { lo, hi }
            }
            "float" => {
                need_no("categories", rc.categories.is_some())?;
                let b = rc.bounds.as_ref().ok_or_else(|| {
                    err(format!("column {name}: a float needs bounds = [low, high]"))
                })?;
                let (lo, hi) = bounds_pair(&name, b)?;
                let (Some(lo), Some(hi)) = (as_f64(&lo), as_f64(&hi)) else {
                    return Err(err(format!("column {name}: float bounds must be numbers")));
                };
                if !(lo.is_finite()
                    && hi.is_finite()
                    && lo < hi
                    && lo.abs() <= MAX_ABS_BOUND
                    && hi.abs() <= MAX_ABS_BOUND)
                {
                    return Err(err(format!(
                        "column {name}: bounds must be finite, low < high and |bound| <= 1e15"
                    )));
                }
                ColumnType::Float { lo, hi }
            }
            "date" => {
                need_no("categories", rc.categories.is_some())?;
                let b = rc.bounds.as_ref().ok_or_else(|| {
                    err(format!(
                        "column {name}: a date needs bounds = [\"YYYY-MM-DD\", \"YYYY-MM-DD\"]"
                    ))
                })?;
                let (lo, hi) = bounds_pair(&name, b)?;
                let parse = |v: &toml::Value| v.as_str().and_then(parse_date);
                let (Some(lo), Some(hi)) = (parse(&lo), parse(&hi)) else {
                    return Err(err(format!(
                        "column {name}: date bounds must be \"YYYY-MM-DD\" strings"
                    )));
                };
                if lo >= hi {
                    return Err(err(format!(
                        "column {name}: the first date must be before the second"
                    )));
                }
                ColumnType::Date { lo, hi }
            }
            "category" => {
                need_no("bounds", rc.bounds.is_some())?;
                let cats = rc.categories.clone().ok_or_else(|| {
                    err(format!(
                        "column {name}: a category needs categories = [\"…\", …]"
                    ))
                })?;
                if cats.is_empty() || cats.len() > MAX_CATEGORIES {
                    return Err(err(format!(
                        "column {name}: declare between 1 and {MAX_CATEGORIES} categories"
                    )));
                }
                let unique: BTreeSet<&String> = cats.iter().collect();
                if unique.len() != cats.len() {
                    return Err(err(format!("column {name}: categories must be distinct")));
                }
                if cats
                    .iter()
                    .any(|c| c.chars().any(char::is_control) || c.len() > 256)
                {
                    return Err(err(format!(
                        "column {name}: categories are at most 256 bytes, without control characters"
                    )));
                }
                ColumnType::Category { categories: cats }
            }
            "bool" => {
                need_no("bounds", rc.bounds.is_some())?;
                need_no("categories", rc.categories.is_some())?;
                ColumnType::Bool
            }
            "id" => {
                need_no("bounds", rc.bounds.is_some())?;
                need_no("categories", rc.categories.is_some())?;
                ColumnType::Id
            }
            "text" | "string" => {
                need_no("bounds", rc.bounds.is_some())?;
                need_no("categories", rc.categories.is_some())?;
                ColumnType::Text
            }
            other => {
                return Err(err(format!(
                    "column {name}: unknown type {other:?} (use int, float, category, date, bool, id or text)"
                )));
            }
        };
        Ok(Column {
            name,
            ty,
            nullable: rc.nullable,
            description: rc.description,
        })
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENTS: &str = include_str!("../../../fixtures/patients.toml");

    #[test]
    fn bucket_starts_are_right_for_every_day_a_manifest_allows() {
        let first = parse_date("0001-01-01").expect("first");
        let last = parse_date("9999-12-31").expect("last");
        let at = |s: &str| parse_date(s).expect("date");
        let dense_ranges = [
            (first, at("0020-12-31")),
            (at("1677-01-01"), at("1678-12-31")),
            (at("2262-01-01"), at("2263-12-31")),
            (at("9980-01-01"), last),
        ];
        let dense = |d: Day| dense_ranges.iter().any(|(a, b)| (*a..=*b).contains(&d));
        // Every day near the ends of the calendar and of 64-bit nanosecond timestamps, and
        // every 7th day in between (each month still met several times).
        for day in (first..=last).filter(|d| d % 7 == 0 || dense(*d)) {
            let shown = format_date(day);
            let month = format_date(month_start(day));
            let year = format_date(year_start(day));
            assert!(month_start(day) <= day && year_start(day) <= month_start(day));
            assert_eq!(month, format!("{}-01", &shown[..7]), "{shown}");
            assert_eq!(year, format!("{}-01-01", &shown[..4]), "{shown}");
        }
    }

    #[test]
    fn parses_the_product_example() {
        let m = Manifest::parse(PATIENTS).expect("valid");
        assert_eq!(m.unit, PrivacyUnit::Row);
        assert_eq!(m.columns.len(), 5);
        assert_eq!(
            m.column("age").map(|c| &c.ty),
            Some(&ColumnType::Int { lo: 0, hi: 120 })
        );
        assert_eq!(
            m.column("visit").map(|c| &c.ty),
            Some(&ColumnType::Date {
                lo: parse_date("2000-01-01").expect("date"),
                hi: parse_date("2030-12-31").expect("date"),
            })
        );
    }

    #[test]
    fn parses_an_id_unit() {
        let m = Manifest::parse(
            r#"
            [privacy]
            unit = { column = "patient_id", max_rows = 5 }
            [columns.patient_id]
            type = "id"
            [columns.age]
            type = "int"
            bounds = [0, 120]
            "#,
        )
        .expect("valid");
        assert_eq!(m.unit.rows_per_unit(), 5);
    }

    #[test]
    fn rejects_bad_manifests_with_clear_reasons() {
        let cases = [
            (
                "[privacy]\nunit = \"row\"\n[columns.Age]\ntype = \"int\"\nbounds = [0, 1]",
                "column name",
            ),
            (
                "[privacy]\nunit = \"row\"\n[columns.age]\ntype = \"int\"",
                "needs bounds",
            ),
            (
                "[privacy]\nunit = \"row\"\n[columns.age]\ntype = \"int\"\nbounds = [5, 1]",
                "low < high",
            ),
            (
                "[privacy]\nunit = \"row\"\n[columns.s]\ntype = \"category\"\ncategories = [\"a\", \"a\"]",
                "distinct",
            ),
            (
                "[privacy]\nunit = \"row\"\n[columns.s]\ntype = \"blob\"",
                "unknown type",
            ),
            (
                "[privacy]\nunit = \"person\"\n[columns.age]\ntype = \"bool\"",
                "privacy.unit",
            ),
            (
                "[privacy]\nunit = { column = \"pid\", max_rows = 5 }\n[columns.age]\ntype = \"bool\"",
                "not a declared column",
            ),
            (
                "[privacy]\nunit = { column = \"age\", max_rows = 5 }\n[columns.age]\ntype = \"bool\"",
                "type = \"id\"",
            ),
            (
                "[privacy]\nunit = \"row\"\n[columns.d]\ntype = \"date\"\nbounds = [\"2020-02-30\", \"2021-01-01\"]",
                "YYYY-MM-DD",
            ),
            (
                "[privacy]\nunit = \"row\"\n[columns.x]\ntype = \"float\"\nbounds = [0, 1]\ncolour = \"red\"",
                "colour",
            ),
        ];
        for (text, needle) in cases {
            let e = Manifest::parse(text).expect_err(text).to_string();
            assert!(
                e.contains(needle),
                "{text}\n→ {e}\n(expected to mention {needle:?})"
            );
        }
    }

    #[test]
    fn dates_round_trip() {
        for s in ["1970-01-01", "2000-02-29", "2030-12-31", "1969-12-31"] {
            assert_eq!(format_date(parse_date(s).expect("valid")), s);
        }
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("2001-02-29"), None);
    }
}
