//! The output of listings: a table, or JSON with `--format json`.

use serde::Serialize;

use super::Format;
use crate::error::{Error, Result};

/// A table cell of both families: `172.18.0.2` or `172.18.0.2,fd00::2`.
pub(super) fn with_ipv6(v4: &impl std::fmt::Display, v6: Option<impl std::fmt::Display>) -> String {
    match v6 {
        Some(v6) => format!("{v4},{v6}"),
        None => v4.to_string(),
    }
}

/// A listing: the rows as JSON, or a table of `headers` with one line of
/// `cells` per row.
pub(super) fn print_listing<T: Serialize>(
    format: Format,
    rows: &[T],
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if format == Format::Json {
        return print_json(rows);
    }
    print_table(headers, rows.iter().map(cells));
    Ok(())
}

pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::system("json output", e))?;
    println!("{text}");
    Ok(())
}

pub(super) fn print_table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    rows.into_iter().for_each(line);
}
