//! Unit tests of config parsing and validation (holds in [`hold`], `[metrics]` in [`metrics`]).

mod hold;
mod metrics;

use super::check::{MAX_JOB_NAME, MAX_LISTENER_NAME, MAX_SOCKET_PATH};
use super::*;
use crate::events::EventKind;
use std::path::Path;
use std::time::Duration;

fn env() -> Environment {
    Environment {
        xdg_runtime_dir: Some("/run/user/1000".into()),
        home: Some("/home/u".into()),
        ..Environment::default()
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/execlib/site.toml"), text, "site", &env())
}

fn error_at(text: &str) -> (usize, usize, String) {
    error_in(&env(), text)
}

/// Line, column and message of the error `text` gives under `env`.
fn error_in(env: &Environment, text: &str) -> (usize, usize, String) {
    match Config::parse(Path::new("/etc/execlib/site.toml"), text, "site", env).unwrap_err() {
        ConfigError::Invalid {
            line,
            column,
            message,
            ..
        } => (line, column, message),
        other => panic!("unexpected {other:?}"),
    }
}

const MINIMAL: &str = r#"
[[listener]]
name = "docs"
  [[listener.route]]
  path = "src"
  shell = "true"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.daemon.shutdown_grace, Duration::from_secs(10));
    assert_eq!(c.daemon.ready_timeout, Duration::from_secs(30));
    assert_eq!(
        c.control.socket,
        Path::new("/run/user/1000/execlib/site/control.sock")
    );
    assert_eq!(c.control.mode, 0o660);
    assert!(c.server.is_none());
    let l = &c.listeners[0];
    assert!(l.autostart);
    let r = &l.routes[0];
    assert_eq!(r.name, "0");
    assert_eq!(r.path, Path::new("/etc/execlib/src"));
    assert_eq!(r.workdir, r.path);
    assert_eq!(r.debounce, Duration::from_millis(200));
    assert_eq!(r.delay, Duration::from_millis(30));
    assert_eq!(r.events.to_string(), "create,modify,delete,move");
    assert!(r.matcher.matches(Path::new("a/b.md")));
    assert!(!r.matcher.matches(Path::new("a/.b.md")));
}

#[test]
fn full_contract_example_parses() {
    let c = parse(
        r#"
[daemon]
shutdown_grace_ms = 500
state_dir = "state"
[control]
socket = "/tmp/x.sock"
mode = "0600"
group = "root"
[server]
listen = "127.0.0.1:9000"
root = "public"
static = true
livereload = false
[[listener]]
name = "docs"
autostart = false
  [[listener.route]]
  name = "pages"
  path = "src"
  glob = ["**/*.md", "*.txt"]
  ignore = ["**/draft-*"]
  events = ["create", "attrib"]
  debounce_ms = 0
  delay_ms = 5
  run = ["make", "-C", "..", "html"]
  workdir = "."
  env = { LANG = "C.UTF-8" }
"#,
    )
    .unwrap();
    assert_eq!(c.daemon.state_dir, Path::new("/etc/execlib/state"));
    assert_eq!(c.control.mode, 0o600);
    assert_eq!(c.control.group, Some(0));
    let s = c.server.unwrap();
    assert_eq!(s.root, Path::new("/etc/execlib/public"));
    assert!(!s.livereload);
    let r = &c.listeners[0].routes[0];
    assert!(r.events.contains(EventKind::Attrib));
    assert!(!r.events.contains(EventKind::Modify));
    assert_eq!(r.workdir, Path::new("/etc/execlib"));
    assert!(r.matcher.matches(Path::new("draft.md")));
    assert!(!r.matcher.matches(Path::new("x/draft-1.md")));
    assert_eq!(
        r.command,
        Command::Run(vec!["make".into(), "-C".into(), "..".into(), "html".into()])
    );
}

#[test]
fn unknown_key_reports_line_and_column() {
    let (line, column, message) = error_at("[daemon]\nshutdown_grace_ms = 1\n  colour = 3\n");
    assert_eq!((line, column), (3, 3), "{message}");
    assert!(message.contains("unknown field `colour`"), "{message}");
}

#[test]
fn unknown_route_key_and_bad_event_kind_are_located() {
    let (line, _, message) =
        error_at(&MINIMAL.replace("shell = \"true\"", "shell = \"true\"\n  gloob = \"*\""));
    assert_eq!(line, 7);
    assert!(message.contains("gloob"), "{message}");
    let (line, _, message) =
        error_at(&MINIMAL.replace("shell = \"true\"", "shell = \"true\"\n  events = [\"write\"]"));
    assert_eq!(line, 7);
    assert!(message.contains("unknown variant `write`"), "{message}");
}

#[test]
fn route_needs_exactly_one_command() {
    let (line, column, message) =
        error_at(&MINIMAL.replace("shell = \"true\"", "run = [\"a\"]\n  shell = \"b\""));
    assert_eq!((line, column), (6, 9));
    assert!(message.contains("exactly one"), "{message}");
    let (line, _, message) = error_at(&MINIMAL.replace("  shell = \"true\"\n", ""));
    assert_eq!(line, 4);
    assert!(message.contains("needs `run`"), "{message}");
}

#[test]
fn invalid_values_are_located() {
    let (line, column, message) =
        error_at(&MINIMAL.replace("path = \"src\"", "path = \"src\"\n  glob = \"a/[b\""));
    assert_eq!((line, column), (6, 10));
    assert!(message.contains("a/[b"), "{message}");
    let (line, column, message) = error_at("[control]\nmode = \"999\"\n");
    assert_eq!((line, column), (2, 8));
    assert!(message.contains("octal"), "{message}");
    let (line, _, message) = error_at("[server]\nroot = \"p\"\nlisten = \"nowhere\"\n");
    assert_eq!(line, 3);
    assert!(message.contains("nowhere"), "{message}");
}

#[test]
fn regression_an_empty_glob_list_is_refused_as_events_are() {
    let (line, column, message) = error_at(&MINIMAL.replace("path = \"src\"", "path = \"src\"\n  glob = []"));
    assert_eq!((line, column), (6, 10));
    assert_eq!(message, "`glob` is empty: the route would never run");
    // An empty `ignore` ignores nothing.
    let c = parse(&MINIMAL.replace("path = \"src\"", "path = \"src\"\n  ignore = []")).unwrap();
    assert!(c.listeners[0].routes[0].matcher.matches(Path::new(".hidden")));
}

#[test]
fn listener_names_are_checked() {
    let (line, column, message) = error_at(&MINIMAL.replace("\"docs\"", "\"my docs\""));
    assert_eq!((line, column), (3, 8));
    assert!(message.contains("letters, digits"), "{message}");
    let twice = format!("{MINIMAL}{MINIMAL}");
    let (line, _, message) = error_at(&twice);
    assert_eq!(line, 8);
    assert!(message.contains("duplicate listener name \"docs\""), "{message}");
}

#[test]
fn toml_syntax_error_is_located() {
    let (line, _, _) = error_at("[daemon]\nshutdown_grace_ms = \n");
    assert_eq!(line, 2);
}

#[test]
fn error_display_is_file_line_column() {
    let err = parse("nonsense = 1\n").unwrap_err().to_string();
    assert!(err.starts_with("/etc/execlib/site.toml:1:1: "), "{err}");
}

#[test]
fn posts_resolve_against_the_config_directory_and_need_a_command() {
    let c = parse(&format!(
        "{MINIMAL}  [[listener.post]]\n  run = [\"notify\", \"done\"]\n  env = {{ A = \"1\" }}\n"
    ))
    .unwrap();
    let post = &c.listeners[0].posts[0];
    assert_eq!(post.name, "post0");
    assert_eq!(post.workdir, Path::new("/etc/execlib"));
    assert_eq!(post.command, Command::Run(vec!["notify".into(), "done".into()]));
    assert_eq!(post.env["A"], "1");
    let (line, _, message) = error_at(&format!("{MINIMAL}  [[listener.post]]\n  workdir = \"x\"\n"));
    assert_eq!(line, 7);
    assert!(message.contains("a post needs `run`"), "{message}");
}

/// MINIMAL with `line` inserted after the route's `path = "src"` (so at line 6).
fn with_route_line(line: &str) -> String {
    MINIMAL.replace("  path = \"src\"\n", &format!("  path = \"src\"\n  {line}\n"))
}

/// MINIMAL with a post holding `line` (at line 9).
fn with_post_line(line: &str) -> String {
    format!("{MINIMAL}  [[listener.post]]\n  shell = \"true\"\n  {line}\n")
}

fn assert_refused(text: &str, at: (usize, usize), needles: &[&str]) {
    let (line, column, message) = error_at(text);
    assert_eq!((line, column), at, "{message}");
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert!(!message.contains('\0'), "{message:?}");
}

#[test]
fn nul_bytes_in_names_are_refused() {
    let nul = "NUL byte";
    assert_refused(
        &MINIMAL.replace("\"docs\"", "\"do\\u0000cs\""),
        (3, 8),
        &["listener name \"do\\0cs\"", nul],
    );
    assert_refused(
        &with_route_line("name = \"pa\\u0000ges\""),
        (6, 10),
        &["route name \"pa\\0ges\"", nul],
    );
    assert_refused(
        &with_post_line("name = \"\\u0000\""),
        (9, 10),
        &["post name", nul],
    );
}

#[test]
fn nul_bytes_in_commands_are_refused() {
    let run = MINIMAL.replace("shell = \"true\"", "run = [\"echo\", \"a\\u0000\"]");
    assert_refused(&run, (6, 18), &["a `run` argument contains a NUL byte"]);
    let program = MINIMAL.replace("shell = \"true\"", "run = [\"\\u0000x\"]");
    assert_refused(&program, (6, 10), &["`run` argument", "NUL byte"]);
    let shell = MINIMAL.replace("shell = \"true\"", "shell = \"true\\u0000\"");
    assert_refused(&shell, (6, 11), &["`shell` contains a NUL byte"]);
    let post = format!("{MINIMAL}  [[listener.post]]\n  run = [\"x\", \"\\u0000\"]\n");
    assert_refused(&post, (8, 15), &["`run` argument", "NUL byte"]);
}

#[test]
fn bad_env_keys_and_values_are_refused() {
    let nul = "NUL byte";
    assert_refused(
        &with_route_line("env = { \"A\\u0000\" = \"1\" }"),
        (6, 11),
        &["env key \"A\\0\"", nul],
    );
    assert_refused(
        &with_route_line("env = { OK = \"1\", \"A=B\" = \"1\" }"),
        (6, 21),
        &["env key \"A=B\" contains '='"],
    );
    assert_refused(
        &with_route_line("env = { \"\" = \"1\" }"),
        (6, 11),
        &["env key is empty"],
    );
    assert_refused(
        &with_route_line("env = { A = \"x\\u0000y\" }"),
        (6, 15),
        &["env value of \"A\"", nul],
    );
    assert_refused(
        &with_post_line("env = { \"=\" = \"1\" }"),
        (9, 11),
        &["env key \"=\" contains '='"],
    );
    let ok = parse(&with_route_line("env = { A = \"a=b\", B = \"\" }")).unwrap();
    assert_eq!(ok.listeners[0].routes[0].env["A"], "a=b");
}

#[test]
fn nul_bytes_in_paths_are_refused() {
    let nul = "NUL byte";
    let route_path = MINIMAL.replace("\"src\"", "\"s\\u0000rc\"");
    assert_refused(&route_path, (5, 10), &["`path` contains", nul]);
    assert_refused(
        &with_route_line("workdir = \"\\u0000\""),
        (6, 13),
        &["`workdir`", nul],
    );
    assert_refused(
        &with_post_line("workdir = \"w\\u0000\""),
        (9, 13),
        &["`workdir`", nul],
    );
    let root = format!("[server]\nroot = \"pub\\u0000lic\"\n{MINIMAL}");
    assert_refused(&root, (2, 8), &["`root`", nul]);
    let state = format!("[daemon]\nstate_dir = \"/var/\\u0000\"\n{MINIMAL}");
    assert_refused(&state, (2, 13), &["`state_dir`", nul]);
    let socket = format!("[control]\nsocket = \"/tmp/\\u0000.sock\"\n{MINIMAL}");
    assert_refused(&socket, (2, 10), &["`socket`", nul]);
}

#[test]
fn unknown_key_with_a_nul_is_reported_without_the_nul() {
    let (line, column, message) = error_at("[daemon]\n\"x\\u0000y\" = 1\n");
    assert_eq!((line, column), (2, 1), "{message}");
    assert!(message.contains("unknown field"), "{message}");
    assert!(message.contains("x\\u{0}y"), "{message}");
    assert!(!message.contains('\0'), "{message:?}");
}

#[test]
fn listener_names_are_capped_at_64_bytes() {
    let longest = "l".repeat(MAX_LISTENER_NAME);
    let c = parse(&MINIMAL.replace("docs", &longest)).unwrap();
    assert_eq!(c.listeners[0].name, longest);
    assert_refused(
        &MINIMAL.replace("docs", &"l".repeat(MAX_LISTENER_NAME + 1)),
        (3, 8),
        &["listener name is 65 bytes long; at most 64"],
    );
}

#[test]
fn route_and_post_names_refuse_control_characters_and_length() {
    assert_refused(
        &with_route_line("name = \"a\\tb\""),
        (6, 10),
        &["route name \"a\\tb\" contains a control character"],
    );
    assert_refused(
        &with_post_line("name = \"line\\nbreak\""),
        (9, 10),
        &["post name", "control character"],
    );
    let longest = "é".repeat(MAX_JOB_NAME / 2);
    let c = parse(&with_route_line(&format!("name = \"{longest}\""))).unwrap();
    assert_eq!(c.listeners[0].routes[0].name, longest);
    assert_refused(
        &with_route_line(&format!("name = \"{longest}x\"")),
        (6, 10),
        &["route name is 129 bytes long; at most 128"],
    );
    assert_refused(
        &with_post_line(&format!("name = \"{}\"", "p".repeat(200))),
        (9, 10),
        &["post name is 200 bytes long"],
    );
    let c = parse(&with_route_line("name = \"pages: html (ünïcode)\"")).unwrap();
    assert_eq!(c.listeners[0].routes[0].name, "pages: html (ünïcode)");
}

#[test]
fn zero_timeouts_are_refused() {
    let hint = "leave it out for no limit";
    assert_refused(
        &with_route_line("timeout_ms = 0"),
        (6, 16),
        &["`timeout_ms` must be at least 1", hint],
    );
    assert_refused(&with_post_line("timeout_ms = 0"), (9, 16), &["at least 1", hint]);
    let c = parse(&with_route_line("timeout_ms = 1")).unwrap();
    assert_eq!(c.listeners[0].routes[0].timeout, Some(Duration::from_millis(1)));
}

#[test]
fn a_send_timeout_under_a_second_is_refused_and_defaults_to_a_minute() {
    assert_refused(
        &format!("[server]\nroot = \"site\"\nsend_timeout_ms = 999\n{MINIMAL}"),
        (3, 19),
        &["`send_timeout_ms` must be at least 1000"],
    );
    let c = parse(&format!(
        "[server]\nroot = \"site\"\nsend_timeout_ms = 1000\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.server.unwrap().send_timeout, Duration::from_secs(1));
    let c = parse(&format!("[server]\nroot = \"site\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.server.unwrap().send_timeout, Duration::from_secs(60));
}

#[test]
fn connections_per_address_are_between_one_and_every_slot_and_default_to_512() {
    let server = |line: &str| format!("[server]\nroot = \"site\"\n{line}\n{MINIMAL}");
    for bad in ["0", "4097"] {
        assert_refused(
            &server(&format!("max_connections_per_address = {bad}")),
            (3, 31),
            &["`max_connections_per_address` must be between 1 and 4096"],
        );
    }
    let c = parse(&server("max_connections_per_address = 4096")).unwrap();
    assert_eq!(c.server.unwrap().max_connections_per_address, 4096);
    let c = parse(&server("")).unwrap();
    assert_eq!(c.server.unwrap().max_connections_per_address, 512);
    assert_refused(
        &server("max_clients = 0"),
        (3, 15),
        &["`max_clients` must be between 1 and 4096"],
    );
}

#[test]
fn allowed_hosts_and_livereload_origins_are_checked_normalized_and_bounded() {
    let server = |line: &str| format!("[server]\nroot = \"site\"\n{line}\n{MINIMAL}");
    let both =
        "allowed_hosts = [\"Dev.Example.test\"]\nlivereload_origins = [\"HTTPS://Dev.Example.com:8443\"]";
    let c = parse(&server(both)).unwrap().server.unwrap();
    assert_eq!(
        c.allowed_hosts.as_deref(),
        Some(["dev.example.test".to_owned()].as_slice())
    );
    assert_eq!(c.livereload_origins, ["https://dev.example.com:8443"]);
    let c = parse(&server("")).unwrap().server.unwrap();
    assert!(c.allowed_hosts.is_none() && c.livereload_origins.is_empty());
    assert_refused(
        &server("allowed_hosts = [\"dev.example.test:80\"]"),
        (3, 18),
        &["is not a host name", "no port"],
    );
    for bad in ["https://x.test/", "x.test", "ftp://x.test", "null"] {
        assert_refused(
            &server(&format!("livereload_origins = [\"{bad}\"]")),
            (3, 23),
            &["is not an origin"],
        );
    }
    let many = (0..65)
        .map(|i| format!("\"h{i}.test\""))
        .collect::<Vec<_>>()
        .join(", ");
    assert_refused(
        &server(&format!("allowed_hosts = [{many}]")),
        (3, 17),
        &["`allowed_hosts` lists at most 64"],
    );
}

#[test]
fn regression_an_idle_timeout_of_zero_is_refused() {
    // It passed `--check`, then closed every connection before its first request:
    // LiveReload clients before their hello, HTTP and control clients at once.
    assert_refused(
        &format!("[control]\nidle_timeout_ms = 0\n{MINIMAL}"),
        (2, 19),
        &["`idle_timeout_ms` must be at least 100"],
    );
    assert_refused(
        &format!("[server]\nroot = \"site\"\nidle_timeout_ms = 99\n{MINIMAL}"),
        (3, 19),
        &["`idle_timeout_ms` must be at least 100", "first request"],
    );
    let c = parse(&format!(
        "[server]\nroot = \"site\"\nidle_timeout_ms = 100\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.server.unwrap().idle_timeout, Duration::from_millis(100));
}

#[test]
fn socket_paths_must_fit_sun_path() {
    assert_refused(
        &format!("[control]\nsocket = \"\"\n{MINIMAL}"),
        (2, 10),
        &["`socket` is empty"],
    );
    // Measured on the absolute path: "/etc/execlib/" (13 bytes) + the name.
    let fits = format!(
        "[control]\nsocket = \"{}\"\n{MINIMAL}",
        "s".repeat(MAX_SOCKET_PATH - 13)
    );
    assert_eq!(parse(&fits).unwrap().control.socket.as_os_str().len(), 107);
    let long = format!(
        "[control]\nsocket = \"{}\"\n{MINIMAL}",
        "s".repeat(MAX_SOCKET_PATH - 12)
    );
    assert_refused(&long, (2, 10), &["is 108 bytes long", "at most 107 bytes"]);
    let absolute = format!("[control]\nsocket = \"/{}\"\n{MINIMAL}", "a".repeat(200));
    assert_refused(&absolute, (2, 10), &["control socket path \"/aaa", "201 bytes"]);
}

#[test]
fn a_too_long_default_socket_is_reported_at_control_or_the_start() {
    let env = Environment {
        xdg_runtime_dir: Some(format!("/run/{}", "r".repeat(100)).into()),
        ..env()
    };
    let (line, column, message) = error_in(&env, MINIMAL);
    assert_eq!((line, column), (1, 1), "{message}");
    assert!(message.contains("default control socket path"), "{message}");
    assert!(message.contains("set a shorter `[control].socket`"), "{message}");
    let (line, column, _) = error_in(&env, &format!("\n[control]\nmode = \"0600\"\n{MINIMAL}"));
    assert_eq!((line, column), (2, 1));
    let c = parse(&format!("[control]\nsocket = \"/run/s.sock\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.control.socket, Path::new("/run/s.sock"));
}

#[test]
fn unknown_groups_are_refused_at_check_time() {
    assert_refused(
        &format!("[control]\ngroup = \"no-such-group-xyz\"\n{MINIMAL}"),
        (2, 9),
        &["group \"no-such-group-xyz\" does not exist"],
    );
    assert_refused(
        &format!("[control]\ngroup = \"ro\\u0000ot\"\n{MINIMAL}"),
        (2, 9),
        &["group \"ro\\0ot\" contains a NUL byte"],
    );
    let c = parse(&format!("[control]\ngroup = \"root\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.control.group, Some(0));
    assert_eq!(parse(MINIMAL).unwrap().control.group, None);
}

/// `Config::load` on `path`, which must fail within 2 s (a FIFO must not hang): its message.
fn load_error(path: &Path) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(Config::load(&path, "site", &env()).map(|_| ()));
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(result) => result.unwrap_err().to_string(),
        Err(_) => panic!("Config::load did not return within 2 s"),
    }
}

#[test]
fn load_refuses_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    crate::sys::mkfifo(&fifo, 0o600).unwrap();
    let message = load_error(&fifo);
    assert!(
        message.ends_with("cannot read config: is not a regular file (a FIFO)"),
        "{message}"
    );
    let message = load_error(dir.path());
    assert!(
        message.contains("is not a regular file (a directory)"),
        "{message}"
    );
    let message = load_error(Path::new("/dev/null"));
    assert!(
        message.contains("is not a regular file (a character device)"),
        "{message}"
    );
}

#[test]
fn regression_a_config_not_in_utf8_is_refused_at_the_first_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(&path, b"# \xc3\xa9t\xc3\xa9\n[[listener]]\nname = \"d\xffocs\"\n").unwrap();
    let err = Config::load(&path, "site", &env()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3:10: the file is not valid UTF-8 here (byte 0xff)",
            path.display()
        )
    );
    // A character cut by the end of the file.
    std::fs::write(&path, b"# \xe2\x82").unwrap();
    let message = Config::load(&path, "site", &env()).unwrap_err().to_string();
    assert!(
        message.ends_with("site.toml:1:3: the file is not valid UTF-8 here (byte 0xe2)"),
        "{message}"
    );
}

#[test]
fn load_refuses_more_than_a_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    let padding = |n: usize| format!("{MINIMAL}{}", "#".repeat(n - MINIMAL.len()));
    std::fs::write(&path, padding(MAX_CONFIG_SIZE as usize)).unwrap();
    assert!(Config::load(&path, "site", &env()).is_ok());
    std::fs::write(&path, padding(MAX_CONFIG_SIZE as usize + 1)).unwrap();
    let message = load_error(&path);
    assert!(
        message.ends_with("cannot read config: is larger than 1 MiB"),
        "{message}"
    );
}

#[test]
fn instance_names_must_fit_a_path_component() {
    for good in ["site", "execlib", "my-site_2", "a.b", "user@host", "x:y", "..."] {
        assert!(check_instance(good).is_ok(), "{good}");
    }
    assert!(check_instance(&"i".repeat(MAX_INSTANCE_NAME)).is_ok());
    for (bad, why) in [
        ("", "it is empty"),
        (".", "`.` and `..`"),
        ("..", "`.` and `..`"),
        ("a/b", "'/'"),
        ("a\0b", "NUL byte"),
        (&"i".repeat(MAX_INSTANCE_NAME + 1), "longer than 200 bytes"),
    ] {
        let message = check_instance(bad).unwrap_err().to_string();
        assert!(message.starts_with("invalid instance name "), "{message}");
        assert!(message.contains(why), "{message}");
        assert!(!message.contains('\0'), "{message:?}");
    }
}

#[test]
fn locate_checks_the_instance_from_either_source() {
    let (path, name) = locate(None, Some("site".into()), &env()).unwrap();
    assert_eq!(
        (path.as_path(), name.as_str()),
        (Path::new("/etc/execlib/site.toml"), "site")
    );
    let (_, name) = locate(Some("/srv/x/web@1.toml".into()), None, &env()).unwrap();
    assert_eq!(name, "web@1");
    assert!(locate(None, Some("../etc".into()), &env()).is_err());
    assert!(locate(None, Some(String::new()), &env()).is_err());
    // `..toml`'s stem is `.`.
    assert!(locate(Some("/srv/..toml".into()), None, &env()).is_err());
    let long = format!("/srv/{}.toml", "n".repeat(MAX_INSTANCE_NAME + 1));
    assert!(locate(Some(long.into()), None, &env()).is_err());
}

/// Property-based: `Config::parse` never panics, locates every error within the
/// text, and accepts only configs within the documented limits. `PROPTEST_CASES=N`
/// runs N cases per property instead of the default.
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A valid config using most keys: the seed of the mutations.
    const VALID: &str = r#"[daemon]
shutdown_grace_ms = 500
state_dir = "state"
[control]
socket = "/tmp/x.sock"
mode = "0600"
[server]
listen = "127.0.0.1:9000"
root = "public"
[[listener]]
name = "docs"
max_jobs = 2
  [[listener.route]]
  name = "pages"
  path = "src"
  glob = ["**/*.md", "*.txt"]
  ignore = ["**/draft-*"]
  events = ["create", "attrib"]
  timeout_ms = 1000
  run = ["make", "-C", "..", "html"]
  env = { LANG = "C.UTF-8" }
  [[listener.post]]
  name = "notify"
  shell = 'logger "$EXECLIB_COUNT"'
  timeout_ms = 10
  env = { A = "1" }
"#;

    /// Bytes that matter to TOML and to validation, favoured by the mutations.
    const SIGNIFICANT: &[u8] = b"[]{}=\"',.#\n\r\t \\0u_-";

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(96)
    }

    /// Whether `bytes` hold a NUL.
    fn nul(bytes: impl AsRef<[u8]>) -> bool {
        bytes.as_ref().contains(&0)
    }

    /// A job's name, command, environment and timeout respect the documented limits.
    fn sound_job(
        name: &str,
        command: &Command,
        env: &BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> bool {
        let args = match command {
            Command::Run(argv) => argv.clone(),
            Command::Shell(s) => vec![s.clone()],
        };
        name.len() <= MAX_JOB_NAME
            && !name.chars().any(char::is_control)
            && !args.iter().any(nul)
            && env
                .iter()
                .all(|(k, v)| !k.is_empty() && !k.contains('=') && !nul(k) && !nul(v))
            && timeout != Some(Duration::ZERO)
    }

    /// A hold's paths are absolute, without NUL; its maximum within its bounds.
    fn sound_hold(hold: &VcsHold) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let paths = match &hold.paths {
            HoldWhile::Git => &[][..],
            HoldWhile::Paths(paths) => paths,
        };
        paths
            .iter()
            .all(|p| p.is_absolute() && !nul(p.as_os_str().as_bytes()))
            && (1..=MAX_VCS_HOLD_LIMIT_MS as u128).contains(&hold.max.as_millis())
    }

    /// An accepted config respects every documented limit.
    fn sound(c: &Config) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let socket = c.control.socket.as_os_str().len();
        (1..=MAX_SOCKET_PATH).contains(&socket)
            && !nul(c.daemon.state_dir.as_os_str().as_bytes())
            && c.listeners.iter().all(|l| {
                l.name.len() <= MAX_LISTENER_NAME
                    && !nul(&l.name)
                    && l.routes.iter().all(|r| {
                        sound_job(&r.name, &r.command, &r.env, r.timeout)
                            && !nul(r.path.as_os_str().as_bytes())
                            && !nul(r.workdir.as_os_str().as_bytes())
                            && sound_hold(&r.vcs_hold)
                    })
                    && l.posts.iter().all(|p| {
                        sound_job(&p.name, &p.command, &p.env, p.timeout)
                            && !nul(p.workdir.as_os_str().as_bytes())
                    })
            })
    }

    /// Parses `text` (a panic fails the case): an accepted config respects the limits,
    /// and an `Invalid` error lies within the text.
    fn parses_within_bounds(text: &str) -> Result<(), TestCaseError> {
        let result = parse(text);
        if let Ok(c) = &result {
            prop_assert!(sound(c), "accepted config breaks a limit: {c:#?}");
        }
        if let Err(ConfigError::Invalid {
            line,
            column,
            message,
            ..
        }) = result
        {
            let lines = text.lines().count();
            prop_assert!(
                line >= 1 && line <= lines + 1,
                "line {line} of {lines}: {message}"
            );
            let this = text.split('\n').nth(line - 1).unwrap_or("");
            let width = this.chars().count();
            prop_assert!(
                column >= 1 && column <= width + 1,
                "column {column} of {width}: {message}"
            );
            prop_assert!(!message.contains('\0'), "{message:?}");
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, u8),
        Delete(usize),
        Replace(usize, u8),
    }

    fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![3 => proptest::sample::select(SIGNIFICANT), 1 => any::<u8>()]
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
            any::<usize>().prop_map(Edit::Delete),
            (any::<usize>(), byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        ]
    }

    /// `VALID` with `edits` applied, each at its position modulo the current length.
    fn mutated(edits: &[Edit]) -> String {
        let mut bytes = VALID.as_bytes().to_vec();
        for e in edits {
            let len = bytes.len();
            match *e {
                Edit::Insert(at, b) => bytes.insert(at % (len + 1), b),
                Edit::Delete(at) if len > 0 => {
                    bytes.remove(at % len);
                }
                Edit::Replace(at, b) if len > 0 => bytes[at % len] = b,
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// `s` as a TOML basic string, control characters escaped.
    fn quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// Strings near the limits: empty, NUL, control characters, '=', long ones.
    fn edgy() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-z]{1,8}",
            1 => "[a-z\u{0}\t\n=é\u{85}]{0,6}",
            1 => "[a-z]{60,70}",
            1 => "[a-z]{120,135}",
        ]
    }

    /// A config whose values come from [`edgy`], with `timeouts` and a socket of
    /// `socket_len` bytes under /tmp.
    fn generated(v: &[String; 6], timeouts: (u64, u64), socket_len: usize) -> String {
        let socket = match socket_len {
            0 => String::new(),
            n => format!("/tmp/{}", "s".repeat(n)),
        };
        format!(
            "[control]\nsocket = {}\n[[listener]]\nname = {}\n  [[listener.route]]\n  name = {}\n  \
             path = {}\n  shell = {}\n  timeout_ms = {}\n  env = {{ {} = {} }}\n  \
             [[listener.post]]\n  run = [\"x\", {}]\n  timeout_ms = {}\n",
            quoted(&socket),
            quoted(&v[0]),
            quoted(&v[1]),
            quoted(&v[2]),
            quoted(&v[3]),
            timeouts.0,
            quoted(&v[4]),
            quoted(&v[5]),
            quoted(&v[3]),
            timeouts.1,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn configs_near_the_limits_are_refused_or_sound(
            values in proptest::array::uniform6(edgy()),
            timeouts in (0u64..4, 0u64..4),
            socket_len in 0usize..110,
        ) {
            parses_within_bounds(&generated(&values, timeouts, socket_len))?;
        }

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            parses_within_bounds(&text)?;
        }

        #[test]
        fn toml_like_text_never_panics(text in "[\\[\\]{}=\"'a-z0-9_.,#\n \\\\-]{0,300}") {
            parses_within_bounds(&text)?;
        }

        #[test]
        fn mutated_valid_config_never_panics(edits in proptest::collection::vec(edit(), 1..8)) {
            parses_within_bounds(&mutated(&edits))?;
        }
    }

    #[test]
    fn the_seeds_are_valid() {
        parse(VALID).unwrap();
        let plain = ["docs", "pages", "src", "true", "LANG", "C"].map(String::from);
        let c = parse(&generated(&plain, (1, 2), 20)).unwrap();
        assert!(sound(&c));
    }
}

#[test]
fn memory_max_and_cpu_weight_take_systemd_values() {
    let limits = |line: &str| parse(&with_route_line(line)).unwrap().listeners[0].routes[0].limits;
    assert_eq!(
        parse(MINIMAL).unwrap().listeners[0].routes[0].limits,
        Limits::default()
    );
    assert_eq!(
        limits("memory_max = 1073741824").memory_max,
        Some(MemoryMax::Bytes(1 << 30))
    );
    assert_eq!(
        limits("memory_max = \"512M\"").memory_max,
        Some(MemoryMax::Bytes(512 << 20))
    );
    assert_eq!(
        limits("memory_max = \"1.5G\"").memory_max,
        Some(MemoryMax::Bytes(3 << 29))
    );
    assert_eq!(
        limits("memory_max = \"2T\"").memory_max,
        Some(MemoryMax::Bytes(2 << 40))
    );
    assert_eq!(
        limits("memory_max = \"64K\"").memory_max,
        Some(MemoryMax::Bytes(64 << 10))
    );
    assert_eq!(
        limits("memory_max = \"4096\"").memory_max,
        Some(MemoryMax::Bytes(4096))
    );
    assert_eq!(
        limits("memory_max = \"50%\"").memory_max,
        Some(MemoryMax::Permyriad(5000))
    );
    assert_eq!(
        limits("memory_max = \"infinity\"").memory_max,
        Some(MemoryMax::Infinity)
    );
    assert_eq!(limits("cpu_weight = 1").cpu_weight, Some(1));
    assert_eq!(limits("cpu_weight = 10000").cpu_weight, Some(10_000));
    let post = parse(&with_post_line("memory_max = \"1G\"\n  cpu_weight = 50")).unwrap();
    assert_eq!(
        post.listeners[0].posts[0].limits,
        Limits {
            memory_max: Some(MemoryMax::Bytes(1 << 30)),
            cpu_weight: Some(50),
        }
    );
}

#[test]
fn bad_memory_max_and_cpu_weight_are_refused_where_written() {
    let not_a_size = "is not a size";
    for (line, needle) in [
        ("memory_max = \"lots\"", not_a_size),
        ("memory_max = \"1g\"", not_a_size),
        ("memory_max = \"1.5\"", not_a_size),
        ("memory_max = \"\"", not_a_size),
        ("memory_max = \"0\"", "at least 1 byte"),
        ("memory_max = 0", "at least 1 byte"),
        ("memory_max = -1", "at least 1 byte"),
        ("memory_max = \"0%\"", "more than 0%"),
        ("memory_max = \"150%\"", "at most 100%"),
        ("memory_max = \"99999999T\"", "too large"),
        (
            "memory_max = 1.5",
            "expected a number of bytes or a string like \"512M\"",
        ),
        ("memory_max = true", "expected a number of bytes"),
    ] {
        assert_refused(&with_route_line(line), (6, 16), &[needle]);
    }
    for (line, needle) in [
        (
            "cpu_weight = 0",
            "`cpu_weight` must be between 1 and 10000, not 0",
        ),
        ("cpu_weight = 10001", "between 1 and 10000"),
        ("cpu_weight = -3", "between 1 and 10000"),
        ("cpu_weight = \"100\"", "invalid type: string"),
    ] {
        assert_refused(&with_route_line(line), (6, 16), &[needle]);
    }
    assert_refused(&with_post_line("memory_max = \"1X\""), (9, 16), &[not_a_size]);
    assert_refused(
        &with_post_line("cpu_weight = 0"),
        (9, 16),
        &["between 1 and 10000"],
    );
}

#[test]
fn poll_options_default_to_auto_and_refuse_short_intervals_and_unknown_modes() {
    use crate::watch::PollMode;
    let c = parse(&with_route_line("debounce_ms = 1")).unwrap();
    let poll = c.listeners[0].routes[0].poll;
    assert_eq!(
        (poll.mode, poll.every),
        (PollMode::Auto, Duration::from_millis(super::DEFAULT_POLL_MS))
    );
    let c = parse(&with_route_line("poll = \"always\"\n  poll_ms = 100")).unwrap();
    let poll = c.listeners[0].routes[0].poll;
    assert_eq!(
        (poll.mode, poll.every),
        (PollMode::Always, Duration::from_millis(100))
    );
    assert_refused(
        &with_route_line("poll_ms = 99"),
        (6, 13),
        &["`poll_ms` must be at least 100"],
    );
    let (line, _, message) = error_at(&with_route_line("poll = \"sometimes\""));
    assert_eq!(line, 6, "{message}");
    assert!(message.contains("auto") && message.contains("never"), "{message}");
}

#[test]
fn server_builds_names_listeners_and_an_unknown_one_is_refused_where_written() {
    let c = parse(&format!(
        "[server]\nroot = \"public\"\nbuilds = [\"docs\"]\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.server.unwrap().builds, Some(vec!["docs".to_owned()]));
    let c = parse(&format!("[server]\nroot = \"public\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.server.unwrap().builds, None, "the default rule");
    assert_refused(
        &format!("[server]\nroot = \"public\"\nbuilds = [\"docs\", \"nope\"]\n{MINIMAL}"),
        (3, 19),
        &["`builds` names \"nope\", which is not a listener"],
    );
}

#[test]
fn list_is_for_batches_only_and_located_when_misplaced() {
    let (line, column, message) =
        error_at(&MINIMAL.replace("path = \"src\"", "path = \"src\"\n  list = \"nul\""));
    assert_eq!((line, column), (6, 10));
    assert!(
        message.contains("`list` applies to `mode = \"batch\"` only"),
        "{message}"
    );
    let (_, _, message) = error_at(&MINIMAL.replace(
        "path = \"src\"",
        "path = \"src\"\n  mode = \"batch\"\n  list = \"nul0\"",
    ));
    assert!(message.contains("nul0"), "{message}");
}
