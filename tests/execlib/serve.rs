//! `execlibd serve`: a folder served with LiveReload from the command line alone,
//! rebuilt with `--run`, stopped with Ctrl-C, leaving nothing behind.

use crate::support::web::*;
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn serve_a_folder_rebuild_on_change_reload_after_and_leave_nothing_behind() {
    let sandbox = Sandbox::new();
    sandbox.write("src/page.md", "v1");
    sandbox.write("site/index.html", "<html><body>v0</body></html>");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .args(["serve", "site", "--port", "0", "--run", "src/*.md"])
        .arg("printf '<html><body>%s</body></html>' \"$(cat src/page.md)\" > site/index.html")
        .current_dir(sandbox.path(""))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(sandbox.path("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(daemon.stdout.take().unwrap()).lines();
    let served = lines.next().unwrap().unwrap();
    let control = lines.next().unwrap().unwrap();
    let addr = served
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let socket = std::path::PathBuf::from(control.rsplit(' ').next().unwrap());
    assert!(served.contains("with LiveReload"), "{served}");
    let page = get(&addr, "/index.html", &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("v0") && page.text().contains("/livereload.js"),
        "{}",
        page.text()
    );
    let mut client = LrClient::on_page(&addr, "/index.html");
    // Its `info` may still be on its way when the first change lands: change until heard.
    client.set_timeout(std::time::Duration::from_millis(300));
    let mut n = 1;
    let reload = eventually("a reload after the build", || {
        n += 1;
        sandbox.write("src/page.md", &format!("v{n}"));
        client.recv()
    });
    assert_eq!(reload["path"], "/index.html", "{reload}");
    let rebuilt = get(&addr, "/index.html", &[]).text();
    assert!(
        !rebuilt.contains("v0") && rebuilt.contains("<body>v"),
        "told after the build: {rebuilt}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) };
    assert!(daemon.wait().unwrap().success());
    assert!(
        !socket.parent().unwrap().exists(),
        "its private directory is removed"
    );
}

#[test]
fn regression_serve_stops_when_its_terminal_closes() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("site")).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .args(["serve", "site", "--port", "0"])
        .current_dir(sandbox.path(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(daemon.stdout.take().unwrap()).lines();
    let served = lines.next().unwrap().unwrap();
    assert!(served.contains("with LiveReload"), "{served}");
    // SIGHUP, as when the terminal closes: no config to reload, so it stops.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGHUP) };
    assert!(daemon.wait().unwrap().success());
}
