//! Where the client commands' results go (a file written atomically, or stdout), and the
//! shapes they take: pretty JSON and aligned tables.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;

use crate::profile::state;

/// Writes `bytes` to `output` atomically, or to stdout.
pub(super) fn emit(output: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match output {
        Some(path) => state::write_atomic(path, bytes)?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bytes).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

/// Pretty JSON with a final newline.
pub(super) fn pretty(value: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// `_` for an empty identity part, as selectors and API paths write it.
pub(super) fn or_underscore(part: &str) -> &str {
    if part.is_empty() { "_" } else { part }
}

/// Rows as aligned columns (two spaces apart, no trailing blanks), one line each.
pub(super) fn aligned<R: AsRef<[String]>>(lines: &[R]) -> String {
    let columns = lines.first().map_or(0, |line| line.as_ref().len());
    let mut widths = vec![0usize; columns];
    for line in lines {
        for (width, cell) in widths.iter_mut().zip(line.as_ref()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
