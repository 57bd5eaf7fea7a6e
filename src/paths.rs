//! Where wasm-jobs keeps its state on this machine: the data directory
//! (embedded queues, module registry) and the compiled-artifact cache in it.
//!
//! Resolution order: `--data-dir`, then `$WASM_JOBS_HOME`, then
//! `$XDG_DATA_HOME/wasm-jobs`, then `~/.local/share/wasm-jobs`. The old
//! name `$WASM_JOBS_DATA_DIR` still works in `$WASM_JOBS_HOME`'s place,
//! with a warning.
//!
//! Resolved once, in the CLI process; the fork server (which has no
//! environment) is handed the paths it needs.

use std::path::{Path, PathBuf};

/// The data directory variable's old name, still read (with a warning).
const OLD_NAME: &str = "WASM_JOBS_DATA_DIR";

/// Resolve the data directory from an explicit flag and the environment.
pub(crate) fn data_dir(explicit: Option<&Path>) -> PathBuf {
    let home = std::env::var_os("WASM_JOBS_HOME").filter(|v| !v.is_empty());
    let old = std::env::var_os(OLD_NAME).filter(|v| !v.is_empty());
    static WARNED: std::sync::Once = std::sync::Once::new();
    if old.is_some() {
        WARNED.call_once(|| {
            tracing::warn!(
                "{OLD_NAME} is the old name of WASM_JOBS_HOME{}",
                if explicit.is_some() || home.is_some() {
                    "; it is ignored"
                } else {
                    "; it still works, but set WASM_JOBS_HOME instead"
                }
            )
        });
    }
    resolve(
        explicit,
        home.or(old).map(PathBuf::from),
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn resolve(
    explicit: Option<&Path>,
    wasm_jobs_home: Option<PathBuf>,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    let non_empty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = non_empty(wasm_jobs_home) {
        return p;
    }
    if let Some(p) = non_empty(xdg_data_home) {
        return p.join("wasm-jobs");
    }
    match non_empty(home) {
        Some(h) => h.join(".local/share/wasm-jobs"),
        None => PathBuf::from(".wasm-jobs"),
    }
}

/// Refuse a directory that group or others can write: anyone who can write
/// the data dir could plant native code in the artifact cache or rewrite the
/// queues. A directory that does not exist yet is fine (it is created 0700).
pub(crate) fn check_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o022 != 0 => Err(format!(
            "{} is writable by group or others (mode {:03o}); run: chmod go-w {}",
            dir.display(),
            m.permissions().mode() & 0o777,
            dir.display()
        )),
        _ => Ok(()),
    }
}

/// wasm-jobs' own directories, which no tenant directory may overlap.
pub(crate) fn own_dirs(data_dir: &Path, registry: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("data directory", data_dir.to_owned()),
        ("registry", registry.to_owned()),
        ("compiled-artifact cache", compiled_dir(data_dir)),
    ]
}

/// The compiled-artifact cache inside a data directory.
pub(crate) fn compiled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("compiled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_private(dir.path()), Ok(()));
        assert_eq!(check_private(&dir.path().join("missing")), Ok(()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private(dir.path()).unwrap_err();
        assert!(
            err.contains("mode 777") && err.contains("chmod go-w"),
            "{err}"
        );
    }

    #[test]
    fn explicit_flag_wins_then_env_then_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            resolve(Some(Path::new("/x")), p("/h"), p("/d"), p("/u")),
            PathBuf::from("/x")
        );
        assert_eq!(
            resolve(None, p("/h"), p("/d"), p("/u")),
            PathBuf::from("/h")
        );
        assert_eq!(
            resolve(None, p(""), p("/d"), p("/u")),
            PathBuf::from("/d/wasm-jobs")
        );
        assert_eq!(
            resolve(None, None, None, p("/u")),
            PathBuf::from("/u/.local/share/wasm-jobs")
        );
    }
}
