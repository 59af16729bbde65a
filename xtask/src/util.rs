//! Small helpers: finding the workspace and running cargo.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (the parent of this crate's manifest directory).
pub(crate) fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The cargo target directory in use.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs `cargo <args>` in the workspace root with extra environment, failing on a
/// non-zero exit.
pub(crate) fn cargo<S: AsRef<str>>(args: &[S], env: &[(&str, String)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    for a in args {
        cmd.arg(a.as_ref());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let status = cmd
        .status()
        .with_context(|| format!("could not start cargo {}", shown.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", shown.join(" "));
    }
    Ok(())
}
