//! `execlibd serve`: a folder served with LiveReload from the command line alone,
//! rebuilt with `--run`, stopped with Ctrl-C, leaving nothing behind.

use crate::support::web::*;
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The `serve` daemon, killed if the test ends (fails) before it stopped it.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `execlibd serve site --port 0 --run GLOB COMMAND` in a sandbox holding `src/page.md`
/// and `site/index.html`; returns it and the lines it prints.
/// The address in `serve`'s "serving http://ADDR/ …" line.
fn served_addr(served: &str) -> String {
    let url = served.split("http://").nth(1).unwrap();
    url.split('/').next().unwrap().to_owned()
}

fn serve_site(
    sandbox: &Sandbox,
    glob: &str,
    command: &str,
) -> (Served, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    sandbox.write("src/page.md", "v1");
    sandbox.write("site/index.html", "<html><body>v0</body></html>");
    let daemon = Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .args(["serve", "site", "--port", "0", "--run", glob, command])
        .current_dir(sandbox.path(""))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(sandbox.path("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Served(daemon);
    let lines = BufReader::new(daemon.0.stdout.take().unwrap()).lines();
    (daemon, lines)
}

#[test]
fn serve_a_folder_rebuild_on_change_reload_after_and_leave_nothing_behind() {
    let sandbox = Sandbox::new();
    let build = "printf '<html><body>%s</body></html>' \"$(cat src/page.md)\" > site/index.html";
    let (mut daemon, mut lines) = serve_site(&sandbox, "src/*.md", build);
    let served = lines.next().unwrap().unwrap();
    let control = lines.next().unwrap().unwrap();
    let addr = served_addr(&served);
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
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGINT) };
    assert!(daemon.0.wait().unwrap().success());
    assert!(
        !socket.parent().unwrap().exists(),
        "its private directory is removed"
    );
}

#[test]
fn regression_serve_run_does_not_run_again_for_the_site_it_wrote() {
    // `--run '**'` from the folder that holds the site: the build's own writes to the
    // site must not match, or each build would start the next, for ever.
    let sandbox = Sandbox::new();
    let build = "cat src/page.md > site/index.html; echo run >> site/runs";
    let (mut daemon, mut lines) = serve_site(&sandbox, "**", build);
    let _served = lines.next().unwrap().unwrap();
    let runs = || sandbox.read("site/runs").map_or(0, |r| r.lines().count());
    eventually("a run for the change", || {
        sandbox.write("src/page.md", "v2");
        std::thread::sleep(std::time::Duration::from_millis(100));
        (runs() > 0).then_some(())
    });
    let settled_runs = settled("the runs", std::time::Duration::from_secs(2), runs);
    assert!(settled_runs >= 1);
    assert_eq!(sandbox.read("site/index.html").as_deref(), Some("v2"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGINT) };
    assert!(daemon.0.wait().unwrap().success());
}

#[test]
fn regression_serve_stops_when_its_terminal_closes() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("site")).unwrap();
    let daemon = Command::new(env!("CARGO_BIN_EXE_execlibd"))
        .args(["serve", "site", "--port", "0"])
        .current_dir(sandbox.path(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Served(daemon);
    let mut lines = BufReader::new(daemon.0.stdout.take().unwrap()).lines();
    let served = lines.next().unwrap().unwrap();
    assert!(served.contains("with LiveReload"), "{served}");
    // SIGHUP, as when the terminal closes: no config to reload, so it stops.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGHUP) };
    assert!(daemon.0.wait().unwrap().success());
}

#[test]
fn regression_serve_answered_a_dns_rebinding_page() {
    let sandbox = Sandbox::new();
    let (_daemon, mut lines) = serve_site(&sandbox, "src/*.md", "true");
    let served = lines.next().unwrap().unwrap();
    let addr = served_addr(&served);
    let ask = |host: &str| {
        let raw = format!("GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        send_raw(&addr, &raw).status
    };
    assert_eq!(ask("rebind.evil.example"), 421, "served on 127.0.0.1 only");
    assert_eq!(ask(&addr), 200);
}
