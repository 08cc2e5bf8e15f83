//! `execlibd serve [DIR]`: the daemon on a config made from the command line, for a
//! web developer who wants a folder served with LiveReload (and, with `--run GLOB
//! COMMAND`, rebuilt on change) without writing a config. It is the same daemon:
//! the config goes through the same validation, and the server the same rules.
//!
//! The config, the control socket and the state live in a private temporary
//! directory, removed at exit; the URL (and how to reach the control socket) is
//! printed once the page is served.

use crate::cli::ServeArgs;
use crate::config::{Config, ConfigError};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why `serve` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The folder is not there.
    #[error("{}: not a directory", crate::names::escaped(.0))]
    NotADirectory(PathBuf),
    /// A path that the generated config cannot hold exactly.
    #[error("{}: not UTF-8; serve a folder with a UTF-8 name (or write a config)", crate::names::escaped(.0))]
    NotUtf8(PathBuf),
    /// The port is taken (or cannot be bound).
    #[error("cannot listen on 127.0.0.1:{port}: {source} (choose another with --port, or --port 0 for any)")]
    Port {
        /// The port asked for.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The temporary directory cannot be made.
    #[error("cannot make a temporary directory: {0}")]
    Temp(std::io::Error),
    /// The generated config is refused (a bad `--run` glob, say).
    #[error("the folder or --run refused: {0}")]
    Config(#[from] ConfigError),
}

/// A generated config and the private directory that holds it (removed on drop).
pub struct Served {
    /// The config.
    pub config: Config,
    /// Where the page is served.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The config for `args`, in a new private temporary directory.
pub fn prepare(args: &ServeArgs) -> Result<Served, ServeError> {
    let cwd = std::env::current_dir().map_err(ServeError::Temp)?;
    let root = cwd.join(args.dir.clone().unwrap_or_else(|| ".".into()));
    if !root.is_dir() {
        return Err(ServeError::NotADirectory(root));
    }
    // The generated config is text: names it cannot carry exactly are refused.
    for dir in [&root, &cwd] {
        if dir.to_str().is_none() {
            return Err(ServeError::NotUtf8(dir.clone()));
        }
    }
    // A port of 0 is chosen now, so the URL can be printed before the daemon runs.
    let probe = TcpListener::bind(("127.0.0.1", args.port)).map_err(|source| ServeError::Port {
        port: args.port,
        source,
    })?;
    let addr = probe.local_addr().map_err(ServeError::Temp)?;
    drop(probe);
    let dir = tempfile::Builder::new()
        .prefix("execlib-serve-")
        .tempdir()
        .map_err(ServeError::Temp)?;
    let path = dir.path().join("serve.toml");
    // The served folder, when it lies under the current directory, is left out of
    // `--run`'s matching: a build that writes the site must not run itself again.
    let site = std::fs::canonicalize(&root)
        .ok()
        .and_then(|r| r.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty());
    let text = config_text(&root, &cwd, addr, args.run.as_deref(), site.as_deref());
    std::fs::write(&path, text).map_err(ServeError::Temp)?;
    let config = Config::load(&path, "serve", &crate::paths::Environment::from_process())?;
    Ok(Served {
        config,
        addr,
        _dir: dir,
    })
}

/// The config's text: a TOML string for every value the user gave. `site` is the
/// served folder relative to `cwd`, when it lies below it: `--run`'s route ignores it.
fn config_text(
    root: &Path,
    cwd: &Path,
    addr: SocketAddr,
    run: Option<&[String]>,
    site: Option<&Path>,
) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let path = |p: &Path| quote(&p.to_string_lossy());
    let mut text = format!(
        "[daemon]\nstate_dir = \"state\"\nshutdown_grace_ms = 2000\n\
         [control]\nsocket = \"control.sock\"\n\
         [server]\nlisten = {}\nroot = {}\ninject = true\nallowed_hosts = []\n",
        quote(&addr.to_string()),
        path(root),
    );
    if let Some([glob, command]) = run {
        // Its route watches the current directory, which may hold the site: it is
        // the build whatever the default rule would say.
        text.push_str("builds = [\"run\"]\n");
        text.push_str(&format!(
            "[[listener]]\nname = \"run\"\n  [[listener.route]]\n  name = \"run\"\n  path = {}\n  \
             glob = {}\n  mode = \"batch\"\n  workdir = {}\n  shell = {}\n",
            path(cwd),
            quote(glob),
            path(cwd),
            quote(command),
        ));
        if let Some(site) = site {
            let site = globset::escape(&site.to_string_lossy());
            let ignores: Vec<String> = crate::glob::DEFAULT_IGNORES
                .iter()
                .map(|g| quote(g))
                .chain([quote(&site), quote(&format!("{site}/**"))])
                .collect();
            text.push_str(&format!("  ignore = [{}]\n", ignores.join(", ")));
        }
    }
    text
}

/// Waits (in a thread) until `addr` accepts connections, then prints the URL and,
/// with `open`, opens it in a browser.
pub fn announce(addr: SocketAddr, root: &Path, socket: &Path, open: bool) {
    let (root, socket) = (root.to_owned(), socket.to_owned());
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > end {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = format!("http://{addr}/");
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "Serving {} at {url} with LiveReload (Ctrl-C stops)\ncontrol: execlibctl --socket {}",
            crate::names::escaped(&root),
            crate::names::escaped(&socket),
        );
        let _ = out.flush();
        if open && let Err(e) = std::process::Command::new("xdg-open").arg(&url).spawn() {
            eprintln!("execlibd: cannot open a browser (xdg-open: {e}); open {url}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_the_command_line_are_quoted_as_toml_strings() {
        let addr: SocketAddr = "127.0.0.1:8778".parse().unwrap();
        let run = ["a\"b/**".to_owned(), "make \\\n html".to_owned()];
        let site = Path::new("my \"site\"");
        let text = config_text(
            Path::new("/srv/my \"site\""),
            Path::new("/srv"),
            addr,
            Some(&run),
            Some(site),
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["server"]["builds"].as_array().map(Vec::len), Some(1));
        assert_eq!(value["server"]["root"].as_str(), Some("/srv/my \"site\""));
        let route = &value["listener"][0]["route"][0];
        assert_eq!(route["glob"].as_str(), Some("a\"b/**"));
        assert_eq!(route["shell"].as_str(), Some("make \\\n html"));
        let ignore: Vec<_> = route["ignore"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ignore[ignore.len() - 2..], ["my \"site\"", "my \"site\"/**"]);
        assert!(ignore.contains(&"**/.*"), "the default ignores stay: {ignore:?}");
    }
}
