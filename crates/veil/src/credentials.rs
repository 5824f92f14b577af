//! The stored login: `<config dir>/credentials.json`, mode 0600, in a 0700 directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub server: String,
    pub email: String,
    pub token: String,
    pub token_id: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("email", &self.email)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// `--config-dir` / `VEIL_CONFIG_DIR`, else `$XDG_CONFIG_HOME/veil`, else `~/.config/veil`.
pub fn config_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("veil"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("cannot find your home directory; set VEIL_CONFIG_DIR")?;
    Ok(PathBuf::from(home).join(".config").join("veil"))
}

fn file(dir: &Path) -> PathBuf {
    dir.join("credentials.json")
}

pub fn load(dir: &Path) -> Result<Option<Credentials>> {
    let path = file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let creds = serde_json::from_str(&text)
        .with_context(|| format!("{} is corrupt; run `veil login` again", path.display()))?;
    Ok(Some(creds))
}

/// Writes atomically (temp file + rename) with owner-only permissions.
pub fn save(dir: &Path, creds: &Credentials) -> Result<PathBuf> {
    private_dir(dir)?;
    let path = file(dir);
    write_atomically(
        &path,
        serde_json::to_string_pretty(creds)?.as_bytes(),
        0o600,
    )?;
    Ok(path)
}

/// Creates `dir` if needed and makes it owner-only (0700 on Unix).
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot secure {}", dir.display()))?;
    }
    Ok(())
}

/// Writes through a temp file beside `path` (created with `mode` on Unix), then renames it
/// into place, so a reader never sees a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("no parent directory")?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn forget(dir: &Path) -> Result<()> {
    match std::fs::remove_file(file(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}
