//! Family 13: a config reloaded (`execlibctl reload`, SIGHUP) to globs built to hurt
//! their compiler: `{a,{a,…}}` alternates nested thousands deep (the compiler
//! recurses a level at a time: the daemon's stack overflowed and it aborted), and
//! globs far longer than any route needs. Each reload is refused as a config error
//! naming the glob, and the daemon goes on as before: it answers, and its job runs.

use crate::common::*;
use std::time::{Duration, Instant};

/// The route's globs when they are not the attack's.
const GLOB: &str = "  glob = \"**\"\n";

/// The site's listener, `docs` on `src`, its route's globs in `globs`.
fn listener(globs: &str) -> String {
    format!(
        "[[listener]]\nname = \"docs\"\n  [[listener.route]]\n  path = \"src\"\n  debounce_ms = 0\n  shell = \"true\"\n{globs}"
    )
}

/// `{a,` nested `depth` deep around `b`: `{a,{a,b}}`.
fn nested_alternates(depth: usize) -> String {
    format!("{}b{}", "{a,".repeat(depth), "}".repeat(depth))
}

/// The hostile globs: a name, and the route line that carries it.
fn hostile_globs() -> Vec<(String, String)> {
    let mut globs = Vec::new();
    for depth in [4_000, scale(100_000, 20_000)] {
        let deep = nested_alternates(depth);
        globs.push((
            format!("alternates_{depth}_deep"),
            format!("  glob = \"{deep}\"\n"),
        ));
    }
    // Thousands deep in few bytes: under the length limit, over the nesting one.
    let bare = format!("{}a{}", "{".repeat(2_000), "}".repeat(2_000));
    globs.push(("braces_2000_deep".into(), format!("  glob = \"{bare}\"\n")));
    let ignored = nested_alternates(4_000);
    globs.push((
        "ignore_4000_deep".into(),
        format!("{GLOB}  ignore = [\"**/.*\", \"{ignored}\"]\n"),
    ));
    // The config itself may be at most 1 MiB.
    for len in [4_097, 65_536, scale(768 << 10, 256 << 10)] {
        let long = format!("**/{}", "a".repeat(len - 3));
        globs.push((format!("long_{len}_bytes"), format!("  glob = \"{long}\"\n")));
    }
    globs
}

/// `jobs_started` of `docs`.
fn jobs_started(daemon: &crate::support::Daemon) -> u64 {
    daemon.listener("docs")["jobs_started"].as_u64().unwrap_or(0)
}

/// Writes `src/<name>` and waits up to 5 s for `docs` to start a job; how long it took.
fn a_job_runs(site: &Site, daemon: &crate::support::Daemon, name: &str) -> Option<Duration> {
    let before = jobs_started(daemon);
    let t0 = Instant::now();
    site.sandbox.write(&format!("src/{name}"), "x");
    while t0.elapsed() < Duration::from_secs(5) {
        if jobs_started(daemon) > before {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// `execlibctl status` within 1 s: its time, or what went wrong.
fn status_answers(daemon: &crate::support::Daemon) -> Result<Duration, String> {
    let t0 = Instant::now();
    let out = daemon.ctl(&["status"]);
    let took = t0.elapsed();
    match out.status.success() && took <= Duration::from_secs(1) {
        true => Ok(took),
        false => Err(format!(
            "exit {:?} after {took:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[test]
fn reloads_to_hostile_globs_are_refused() {
    let mut case = Case::new("reloads_to_hostile_globs_are_refused");
    let site = site("", &listener(GLOB));
    std::fs::create_dir_all(site.sandbox.path("src")).unwrap();
    let good = std::fs::read_to_string(&site.config).unwrap();
    let Some(daemon) = start(&mut case, &site) else {
        return case.finish();
    };
    let watch = Watch::start(&daemon, &site.addr);
    let globs = hostile_globs();
    case.set("globs", globs.len());
    let (mut refused, mut statuses, mut reloads) = (0, Latencies::default(), Latencies::default());
    for (i, (name, line)) in globs.iter().enumerate() {
        std::fs::write(&site.config, good.replace(&listener(GLOB), &listener(line))).unwrap();
        let t0 = Instant::now();
        let out = daemon.ctl(&["reload"]);
        reloads.0.push(t0.elapsed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = stderr.chars().take(300).collect::<String>();
        let ok = !out.status.success() && stderr.contains("invalid glob");
        refused += usize::from(ok);
        case.check(
            ok,
            format!("reload to {name}: exit {:?}, {said}", out.status.code()),
        );
        match status_answers(&daemon) {
            Ok(took) => statuses.0.push(took),
            Err(e) => {
                case.check(false, format!("status after the reload to {name}: {e}"));
                break;
            }
        }
        // A SIGHUP loads the same config on the same path as `reload`: once, deep.
        if i == 0 {
            daemon.signal(libc::SIGHUP);
            std::thread::sleep(Duration::from_millis(500));
            if let Err(e) = status_answers(&daemon) {
                case.check(false, format!("status after SIGHUP to {name}: {e}"));
                break;
            }
        }
    }
    case.set("refused", refused);
    case.set_ms("reload_max_ms", reloads.max_ms());
    case.set_ms("status_max_ms", statuses.max_ms());
    let alive = crate::support::alive(daemon.pid());
    case.set("daemon_alive", alive);
    // The old config goes on: its listener runs, its job starts, and a good reload
    // is still taken.
    let ran = alive.then(|| a_job_runs(&site, &daemon, "after")).flatten();
    case.set_ms("job_after_ms", ran.map_or(f64::NAN, ms));
    std::fs::write(&site.config, &good).unwrap();
    let good_reload = alive && daemon.ctl(&["reload"]).status.success();
    case.set("good_reload", good_reload);
    let measured = watch.finish(&mut case, Duration::from_millis(200));
    case.set("errors", globs.len() - refused);
    case.check(alive, "the daemon died");
    case.check(ran.is_some(), "no job ran for a file written after the reloads");
    case.check(good_reload, "a reload to the good config was refused afterwards");
    case.check(
        measured.probe.errors == 0,
        format!("the HTTP probe saw {} errors", measured.probe.errors),
    );
    drop(daemon);
    case.finish();
}
