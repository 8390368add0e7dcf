//! Where the client commands' results go: a file written atomically, or stdout.

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
