//! Human output: aligned tables and key/value blocks. JSON output is the API's own JSON.

use serde::Serialize;
use veil_api_types::ChronoTime;

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(width(cell));
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(widths[i] - width(cell) + 2));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k}:{} {v}\n", " ".repeat(w - k.len())))
        .collect()
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Formats a timestamp for tables (UTC, to the second); `-` for none.
pub fn time(t: Option<&ChronoTime>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// Trims the decimal noise of an `f64` that came from exact integer units.
pub fn amount(x: f64) -> String {
    let s = format!("{x:.15}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_trailing_space() {
        let mut t = Table::new(&["EMAIL", "ROLE", "STATUS"]);
        t.row(vec![
            "ana@lab.org".into(),
            "data-scientist".into(),
            "active".into(),
        ]);
        t.row(vec!["owner@localhost".into(), "owner".into(), "".into()]);
        assert_eq!(
            t.render(),
            "EMAIL            ROLE            STATUS\n\
             ana@lab.org      data-scientist  active\n\
             owner@localhost  owner\n"
        );
    }

    #[test]
    fn amounts_print_exactly() {
        assert_eq!(amount(3.0), "3");
        assert_eq!(amount(0.1), "0.1");
        assert_eq!(amount(1e-6), "0.000001");
        assert_eq!(amount(0.0), "0");
    }
}
