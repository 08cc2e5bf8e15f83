//! Where things live: config file, control socket, state directory and the
//! runtime base, derived from the instance name and the process environment
//! (systemd's `*_DIRECTORY` variables, XDG variables, root or not).

use std::path::{Path, PathBuf};

/// The parts of the process environment that decide default paths.
///
/// Captured once so path logic stays pure and testable.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Whether the process runs as root (effective uid 0).
    pub is_root: bool,
    /// `$RUNTIME_DIRECTORY` (set by systemd's `RuntimeDirectory=`).
    pub runtime_directory: Option<PathBuf>,
    /// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`).
    pub state_directory: Option<PathBuf>,
    /// `$CONFIGURATION_DIRECTORY` (set by systemd's `ConfigurationDirectory=`).
    pub configuration_directory: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$XDG_STATE_HOME`.
    pub xdg_state_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
}

impl Environment {
    /// Reads the environment of the current process.
    pub fn from_process() -> Self {
        // systemd may pass several colon-separated directories; the first is ours.
        let dir = |name: &str| {
            std::env::var_os(name)
                .and_then(|v| v.to_str().map(|s| s.split(':').next().unwrap_or("").to_owned()))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        Environment {
            is_root: crate::sys::euid() == 0,
            runtime_directory: dir("RUNTIME_DIRECTORY"),
            state_directory: dir("STATE_DIRECTORY"),
            configuration_directory: dir("CONFIGURATION_DIRECTORY"),
            xdg_runtime_dir: dir("XDG_RUNTIME_DIR"),
            xdg_state_home: dir("XDG_STATE_HOME"),
            home: dir("HOME"),
        }
    }

    /// The config file of instance `name`.
    pub fn config_path(&self, name: &str) -> PathBuf {
        let dir = self
            .configuration_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/execlib"));
        dir.join(format!("{name}.toml"))
    }

    /// The folder holding one sub-folder per instance with its control socket:
    /// `/run/execlib` as root, else `$XDG_RUNTIME_DIR/execlib`.
    pub fn runtime_base(&self) -> PathBuf {
        if self.is_root {
            return PathBuf::from("/run/execlib");
        }
        match &self.xdg_runtime_dir {
            Some(dir) => dir.join("execlib"),
            None => std::env::temp_dir().join(format!("execlib-{}", crate::sys::uid())),
        }
    }

    /// The control socket a daemon of instance `name` uses when the config names none.
    pub fn daemon_socket(&self, name: &str) -> PathBuf {
        match &self.runtime_directory {
            Some(dir) => dir.join("control.sock"),
            None => self.instance_socket(name),
        }
    }

    /// The control socket of instance `name` under the runtime base (what the client looks for).
    pub fn instance_socket(&self, name: &str) -> PathBuf {
        self.runtime_base().join(name).join("control.sock")
    }

    /// The state directory of instance `name` when the config names none.
    pub fn state_dir(&self, name: &str) -> PathBuf {
        if let Some(dir) = &self.state_directory {
            return dir.clone();
        }
        if self.is_root {
            return Path::new("/var/lib/execlib").join(name);
        }
        let base = self.xdg_state_home.clone().unwrap_or_else(|| {
            self.home
                .clone()
                .unwrap_or_else(std::env::temp_dir)
                .join(".local/state")
        });
        base.join("execlib").join(name)
    }
}

/// Where `path` resolves when that is elsewhere: a symlink is on its way (for
/// `--check` and `listeners` to say). `None` when it resolves to itself or not at all.
pub fn resolves_elsewhere(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok().filter(|target| target != path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Environment {
        Environment {
            xdg_runtime_dir: Some("/run/user/1000".into()),
            home: Some("/home/u".into()),
            ..Environment::default()
        }
    }

    #[test]
    fn socket_prefers_runtime_directory_then_root_then_xdg() {
        let mut env = user();
        assert_eq!(
            env.daemon_socket("site"),
            Path::new("/run/user/1000/execlib/site/control.sock")
        );
        env.is_root = true;
        assert_eq!(
            env.daemon_socket("site"),
            Path::new("/run/execlib/site/control.sock")
        );
        env.runtime_directory = Some("/run/x".into());
        assert_eq!(env.daemon_socket("site"), Path::new("/run/x/control.sock"));
    }

    #[test]
    fn config_and_state_defaults() {
        let mut env = user();
        assert_eq!(env.config_path("site"), Path::new("/etc/execlib/site.toml"));
        assert_eq!(
            env.state_dir("site"),
            Path::new("/home/u/.local/state/execlib/site")
        );
        env.configuration_directory = Some("/etc/other".into());
        env.is_root = true;
        assert_eq!(env.config_path("site"), Path::new("/etc/other/site.toml"));
        assert_eq!(env.state_dir("site"), Path::new("/var/lib/execlib/site"));
        env.state_directory = Some("/var/lib/s".into());
        assert_eq!(env.state_dir("site"), Path::new("/var/lib/s"));
    }
}
