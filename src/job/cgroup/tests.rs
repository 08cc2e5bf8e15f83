//! Unit tests of the cgroup module: the parsers on sample text, and the tree and
//! job groups on a real cgroup2 hierarchy (a scratch cgroup made under ours and
//! removed at the end, whatever happens). Those need root and a cgroup2 mount:
//! without them they print SKIP and pass, unless `TESTS_NO_SKIP=1`.

use super::detect::{cgroup2_mounts, delegation, locate, unified_path};
use super::group::{clear, kill_each, pids_in, read_stats};
use super::*;
use crate::mountinfo::Mount;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

// ---- parsing ----

#[test]
fn the_unified_line_of_proc_self_cgroup_is_ours() {
    let hybrid = "9:name=systemd:/\n4:memory:/x/y\n1:cpu:/\n0::/system.slice/execlib@site.service\n";
    assert_eq!(unified_path(hybrid), Some("/system.slice/execlib@site.service"));
    assert_eq!(unified_path("0::/\n"), Some("/"));
    assert_eq!(unified_path("4:memory:/\n1:cpu,cpuacct:/\n"), None);
}

#[test]
fn cgroup2_mounts_are_found_in_mountinfo() {
    let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
50 23 0:38 /system.slice /mnt/my\\040cgroups ro,relatime master:1 shared:2 - cgroup2 none rw
60 23 0:40 / /proc rw - proc proc rw
";
    assert_eq!(
        cgroup2_mounts(mountinfo),
        vec![
            Mount {
                id: 41,
                parent: 31,
                root: "/".into(),
                point: "/sys/fs/cgroup/unified".into(),
                fstype: "cgroup2".into(),
                read_only: false,
            },
            Mount {
                id: 50,
                parent: 23,
                root: "/system.slice".into(),
                point: "/mnt/my cgroups".into(),
                fstype: "cgroup2".into(),
                read_only: true,
            },
        ]
    );
    assert!(cgroup2_mounts("garbage\n1 2 3\n- cgroup2\n").is_empty());
}

#[test]
fn our_directory_is_under_the_mount_with_the_longest_root() {
    let mount = |root: &str, point: &str| Mount {
        id: 1,
        parent: 1,
        root: root.into(),
        point: point.into(),
        fstype: "cgroup2".into(),
        read_only: false,
    };
    let mounts = [
        mount("/", "/sys/fs/cgroup"),
        mount("/system.slice", "/mnt/sys"),
        mount("/", "/elsewhere"),
    ];
    let dir = |path| locate(&mounts, path).map(|(_, d)| d);
    assert_eq!(
        dir("/user.slice/u.service"),
        Some("/sys/fs/cgroup/user.slice/u.service".into())
    );
    assert_eq!(dir("/"), Some("/sys/fs/cgroup".into()));
    assert_eq!(dir("/system.slice/a.service"), Some("/mnt/sys/a.service".into()));
    assert_eq!(dir("/system.slice"), Some("/mnt/sys".into()));
    // Not on a component boundary: the root mount applies.
    assert_eq!(
        dir("/system.slicex/a"),
        Some("/sys/fs/cgroup/system.slicex/a".into())
    );
    assert_eq!(locate(&mounts[1..2], "/user.slice"), None);
}

#[test]
fn keyed_files_and_meminfo_parse() {
    let cpu_stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n";
    assert_eq!(keyed(cpu_stat, "usage_usec"), Some(123_456));
    assert_eq!(keyed(cpu_stat, "usage"), None);
    let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
    assert_eq!(
        (keyed(events, "oom"), keyed(events, "oom_kill")),
        (Some(2), Some(1))
    );
    assert_eq!(keyed("populated 1\nfrozen 0\n", "populated"), Some(1));
    let meminfo = "MemTotal:       32795512 kB\nMemFree:         1000 kB\n";
    assert_eq!(mem_total(meminfo), Some(32_795_512 * 1024));
    assert_eq!(mem_total("MemFree: 1 kB\n"), None);
}

#[test]
fn memory_failures_name_the_limit() {
    let over = Stats {
        ooms: 1,
        oom_kills: 1,
        memory_max: Some(MemoryMax::Bytes(512 << 20)),
        ..Stats::default()
    };
    assert!(over.over_memory_max());
    assert_eq!(
        over.memory_failure().as_deref(),
        Some("exceeded memory_max (512M): 1 process killed by the OOM killer")
    );
    let failed_allocation = Stats { oom_kills: 0, ..over };
    assert!(
        failed_allocation
            .memory_failure()
            .unwrap()
            .contains("an allocation failed")
    );
    assert!(
        Stats { oom_kills: 3, ..over }
            .memory_failure()
            .unwrap()
            .contains("3 processes")
    );
    // OOM kills without a memory_max of ours (the machine ran out) are not ours to report.
    let global = Stats {
        memory_max: None,
        ..over
    };
    assert!(!global.over_memory_max() && global.memory_failure().is_none());
    let unlimited = Stats {
        memory_max: Some(MemoryMax::Infinity),
        ..over
    };
    assert!(!unlimited.over_memory_max());
    assert!(!Stats::default().over_memory_max());
}

/// A tree whose controllers are all there, on a plain directory standing in for
/// cgroupfs (this host's cgroup2 may lack them).
fn fake_tree(dir: &Path) -> Tree {
    Tree {
        dir: dir.to_owned(),
        memory: true,
        cpu: true,
        physical_memory: Some(8 << 30),
    }
}

#[test]
fn limits_are_written_as_the_kernel_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |limits: Limits| {
        for file in ["memory.max", "cpu.weight"] {
            fs::write(tmp.path().join(file), "untouched").unwrap();
        }
        let applied = fake_tree(tmp.path()).apply(tmp.path(), &limits).unwrap();
        let read = |f: &str| fs::read_to_string(tmp.path().join(f)).unwrap();
        (applied, read("memory.max"), read("cpu.weight"))
    };
    let half = Limits {
        memory_max: Some(MemoryMax::Permyriad(5000)),
        cpu_weight: Some(250),
    };
    assert_eq!(
        write(half),
        (half.memory_max, (4u64 << 30).to_string(), "250".into())
    );
    let bytes = Limits {
        memory_max: Some(MemoryMax::Bytes(512 << 20)),
        cpu_weight: None,
    };
    assert_eq!(
        write(bytes),
        (bytes.memory_max, (512u64 << 20).to_string(), "untouched".into())
    );
    let infinity = Limits {
        memory_max: Some(MemoryMax::Infinity),
        cpu_weight: Some(1),
    };
    assert_eq!(write(infinity), (infinity.memory_max, "max".into(), "1".into()));
    let nothing = write(Limits::default());
    assert_eq!(nothing, (None, "untouched".into(), "untouched".into()));
    // Without the machine's memory size a percentage cannot be worked out.
    let mut unknown = fake_tree(tmp.path());
    unknown.physical_memory = None;
    assert_eq!(unknown.unenforced(&half), vec!["memory_max"]);
    assert_eq!(unknown.apply(tmp.path(), &half).unwrap(), None);
    assert!(fake_tree(tmp.path()).unenforced(&half).is_empty());
}

#[test]
fn stats_come_from_cpu_stat_memory_peak_and_memory_events() {
    let tmp = tempfile::tempdir().unwrap();
    let max = Some(MemoryMax::Bytes(64 << 20));
    assert_eq!(
        read_stats(tmp.path(), max),
        Stats {
            memory_max: max,
            ..Stats::default()
        }
    );
    fs::write(
        tmp.path().join("cpu.stat"),
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    )
    .unwrap();
    fs::write(tmp.path().join("memory.peak"), "67108864\n").unwrap();
    fs::write(
        tmp.path().join("memory.events"),
        "low 0\nhigh 0\nmax 40\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .unwrap();
    let stats = read_stats(tmp.path(), max);
    assert_eq!(
        stats,
        Stats {
            cpu_usec: Some(1500),
            memory_peak: Some(64 << 20),
            ooms: 1,
            oom_kills: 1,
            memory_max: max,
        }
    );
    assert_eq!(
        stats.memory_failure().as_deref(),
        Some("exceeded memory_max (64M): 1 process killed by the OOM killer")
    );
}

#[test]
fn detect_gives_a_tree_or_a_reason() {
    match detect() {
        Ok(tree) => {
            eprintln!("cgroup tree here: {tree:?}");
            assert!(tree.dir().join("cgroup.procs").exists(), "{tree:?}");
        }
        Err(why) => {
            let why = why.to_string();
            eprintln!("no cgroup tree here: {why}");
            assert!(why.len() > 10, "{why:?}");
        }
    }
}

// ---- on a real cgroup2 hierarchy ----

/// A scratch cgroup under ours, with the processes the test started; dropping it
/// kills them and removes the cgroup and everything below it.
struct Scratch {
    dir: PathBuf,
    children: Vec<Child>,
}

/// A fresh scratch cgroup, or `None` (SKIP printed) without root or cgroup2; with
/// `TESTS_NO_SKIP=1`, that is a failure instead.
fn scratch(test: &str) -> Option<Scratch> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let reason = if crate::sys::euid() != 0 {
        Err("not root".to_owned())
    } else {
        own_dir().and_then(|own| {
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let dir = own.join(format!("execlib-test-{}-{n}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => Ok(dir),
                Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
            }
        })
    };
    match reason {
        Ok(dir) => Some(Scratch {
            dir,
            children: Vec::new(),
        }),
        Err(why) if std::env::var_os("TESTS_NO_SKIP").is_some_and(|v| v == "1") => {
            panic!("{test} needs root and a writable cgroup2 hierarchy: {why}")
        }
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            None
        }
    }
}

/// The directory of the test process's own cgroup.
fn own_dir() -> Result<PathBuf, String> {
    let read = |p: &str| fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let proc_cgroup = read("/proc/self/cgroup")?;
    let path = unified_path(&proc_cgroup).ok_or("cgroup v1 only")?;
    let mounts = cgroup2_mounts(&read("/proc/self/mountinfo")?);
    match locate(&mounts, path) {
        None => Err("no cgroup2 mount".to_owned()),
        Some((mount, _)) if mount.read_only => Err("the cgroup2 mount is read-only".to_owned()),
        Some((_, dir)) => Ok(dir),
    }
}

impl Scratch {
    /// Starts `sh -c SCRIPT` held before SCRIPT runs (see [`Scratch::release`]),
    /// so it can be moved to a cgroup before it forks.
    fn held(&mut self, script: &str) -> u32 {
        let child = Command::new("sh")
            .args(["-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh starts");
        self.children.push(child);
        self.children.last().unwrap().id()
    }

    /// Lets held process `pid` run its script, and waits for its first line of output.
    fn release(&mut self, pid: u32) -> String {
        let child = self.children.iter_mut().find(|c| c.id() == pid).unwrap();
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    }

    /// Waits for child `pid` and returns the signal that ended it.
    fn reap(&mut self, pid: u32) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let child = self.children.iter_mut().find(|c| c.id() == pid).unwrap();
        child.wait().unwrap().signal()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = clear(&self.dir) {
            eprintln!("cannot remove the scratch cgroup {}: {e}", self.dir.display());
        }
    }
}

/// Moves process `pid` to the cgroup of `procs` (a `cgroup.procs` path).
fn move_to(procs: &Path, pid: u32) {
    write_file(procs, &pid.to_string()).unwrap();
}

/// Waits (at most 5 s) until `group` has `n` members.
fn wait_members(group: &JobGroup, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let members = group.members();
        if members.len() == n || Instant::now() > deadline {
            return members;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn delegation_is_an_attribute_or_our_ownership() {
    let Some(s) = scratch("delegation_is_an_attribute_or_our_ownership") else {
        return;
    };
    let why = delegation(&s.dir, 0).unwrap_err();
    assert!(
        why.contains("no trusted.delegate or user.delegate attribute"),
        "{why}"
    );
    xattr::set(&s.dir, "user.delegate", b"1").unwrap();
    assert_eq!(delegation(&s.dir, 0), Ok(()));
    xattr::set(&s.dir, "user.delegate", b"0").unwrap();
    assert!(delegation(&s.dir, 0).is_err());
    xattr::set(&s.dir, "trusted.delegate", b"1").unwrap();
    assert_eq!(delegation(&s.dir, 0), Ok(()));
    xattr::remove(&s.dir, "trusted.delegate").unwrap();
    // Not root: delegated when it and its cgroup.procs are ours (Delegate=yes with User=).
    let why = delegation(&s.dir, 4321).unwrap_err();
    assert!(
        why.contains("belong to uid 0 and 0, not to us (uid 4321)"),
        "{why}"
    );
    std::os::unix::fs::chown(&s.dir, Some(4321), None).unwrap();
    assert!(delegation(&s.dir, 4321).is_err(), "cgroup.procs is still root's");
    std::os::unix::fs::chown(s.dir.join("cgroup.procs"), Some(4321), None).unwrap();
    assert_eq!(delegation(&s.dir, 4321), Ok(()));
}

#[tokio::test]
async fn a_job_group_holds_every_descendant_then_kills_measures_and_goes() {
    let Some(mut s) = scratch("a_job_group_holds_every_descendant_then_kills_measures_and_goes") else {
        return;
    };
    let tree = Tree::at(&s.dir).unwrap();
    let group = tree.create_job(1, &Limits::default()).unwrap();
    assert_eq!(group.dir(), s.dir.join("job-1"));
    assert!(group.is_empty() && group.members().is_empty());
    // Moved through the open cgroup.procs, as the spawner does, before it forks.
    let sh = s.held(
        "sleep 60 & setsid sleep 60 & i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo forked; wait",
    );
    let mut procs = File::from(group.procs_fd().try_clone_to_owned().unwrap());
    write!(procs, "{sh}").unwrap();
    assert_eq!(s.release(sh), "forked\n");
    let members = wait_members(&group, 3);
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.contains(&sh));
    assert!(!group.is_empty());
    assert_eq!(group.signal(0), 3);

    group.kill();
    assert!(
        group.wait_empty(Duration::from_secs(5)).await,
        "{:?}",
        group.members()
    );
    assert_eq!(s.reap(sh), Some(libc::SIGKILL));
    let stats = group.stats();
    assert!(stats.cpu_usec.is_some_and(|us| us > 0), "{stats:?}");
    assert!(!stats.over_memory_max());
    if tree.memory {
        assert!(stats.memory_peak.is_some(), "{stats:?}");
    }
    let dir = group.dir().to_owned();
    assert!(group.remove());
    assert!(!dir.exists());
}

#[tokio::test]
async fn without_cgroup_kill_every_member_is_killed_in_rounds() {
    let Some(mut s) = scratch("without_cgroup_kill_every_member_is_killed_in_rounds") else {
        return;
    };
    let tree = Tree::at(&s.dir).unwrap();
    let group = tree.create_job(2, &Limits::default()).unwrap();
    // A sub-cgroup made by the job: its processes are members too.
    let inner = group.dir().join("inner");
    fs::create_dir(&inner).unwrap();
    let sh = s.held("for i in 1 2 3 4 5; do sleep 60 & done; echo forked; wait");
    move_to(&group.dir().join("cgroup.procs"), sh);
    let nested = s.held("echo ready; exec sleep 60");
    move_to(&inner.join("cgroup.procs"), nested);
    s.release(sh);
    s.release(nested);
    assert_eq!(wait_members(&group, 7).len(), 7);

    kill_each(group.dir());
    assert!(
        group.wait_empty(Duration::from_secs(5)).await,
        "{:?}",
        group.members()
    );
    assert_eq!(
        fs::read_to_string(group.dir().join("cgroup.freeze"))
            .unwrap()
            .trim(),
        "0"
    );
    assert!(group.remove(), "sub-cgroups are removed too");
}

#[tokio::test]
async fn dropping_a_group_with_processes_kills_them_and_removes_it() {
    let Some(mut s) = scratch("dropping_a_group_with_processes_kills_them_and_removes_it") else {
        return;
    };
    let tree = Tree::at(&s.dir).unwrap();
    let group = tree.create_job(3, &Limits::default()).unwrap();
    let dir = group.dir().to_owned();
    let sh = s.held("echo ready; exec sleep 60");
    move_to(&dir.join("cgroup.procs"), sh);
    s.release(sh);
    drop(group);
    assert!(!dir.exists());
    assert_eq!(s.reap(sh), Some(libc::SIGKILL));
}

#[test]
fn setup_moves_the_daemon_to_a_leaf_and_clears_stale_jobs() {
    let Some(mut s) = scratch("setup_moves_the_daemon_to_a_leaf_and_clears_stale_jobs") else {
        return;
    };
    // A crashed predecessor's jobs: one with a process, one with a sub-cgroup holding one.
    let stale = [
        s.dir.join("job-7"),
        s.dir.join("job-8"),
        s.dir.join("job-8/inner"),
    ];
    for dir in &stale {
        fs::create_dir(dir).unwrap();
    }
    for dir in [&stale[0], &stale[2]] {
        let pid = s.held("echo ready; exec sleep 60");
        move_to(&dir.join("cgroup.procs"), pid);
        s.release(pid);
    }
    fs::create_dir(s.dir.join("unrelated")).unwrap();
    // The "daemon", in the tree's own directory as systemd starts it.
    let daemon = s.held("echo ready; exec sleep 60");
    move_to(&s.dir.join("cgroup.procs"), daemon);
    s.release(daemon);

    let mut tree = Tree::at(&s.dir).unwrap();
    let prepared = tree.setup_for(daemon).unwrap();
    assert_eq!(
        prepared,
        Prepared {
            stale_removed: 2,
            stale_left: 0
        }
    );
    assert!(stale.iter().all(|d| !d.exists()));
    assert!(s.dir.join("unrelated").exists());
    assert_eq!(pids_in(&s.dir.join(SUPERVISOR)), vec![daemon]);
    assert_eq!(read_file(&s.dir.join("cgroup.procs")).unwrap(), "");
    let available = read_file(&s.dir.join("cgroup.controllers")).unwrap();
    for (name, on) in [("memory", tree.memory), ("cpu", tree.cpu)] {
        assert_eq!(
            available.split_whitespace().any(|c| c == name),
            on,
            "{name}: {available}"
        );
    }
    // Again, as after a restart inside the tree: nothing to do, nothing wrong.
    assert_eq!(tree.setup_for(daemon).unwrap(), Prepared::default());
    assert_eq!(pids_in(&s.dir.join(SUPERVISOR)), vec![daemon]);

    // A taken name is never reused (it could be a live job's).
    let first = tree.create_job(7, &Limits::default()).unwrap();
    let second = tree.create_job(7, &Limits::default()).unwrap();
    assert_eq!(first.dir(), s.dir.join("job-7"));
    assert_eq!(second.dir(), s.dir.join("job-7-1"));
    drop((first, second));
    assert!(!s.dir.join("job-7").exists() && !s.dir.join("job-7-1").exists());
}

#[test]
fn limits_are_written_where_the_controller_is_and_reported_where_not() {
    let Some(mut s) = scratch("limits_are_written_where_the_controller_is_and_reported_where_not") else {
        return;
    };
    let mut tree = Tree::at(&s.dir).unwrap();
    let limits = Limits {
        memory_max: Some(MemoryMax::Bytes(256 << 20)),
        cpu_weight: Some(250),
    };
    // No controller: nothing applied, both reported.
    (tree.memory, tree.cpu) = (false, false);
    assert!(tree.controllers().is_empty());
    assert_eq!(tree.unenforced(&limits), vec!["memory_max", "cpu_weight"]);
    assert!(tree.unenforced(&Limits::default()).is_empty());
    let group = tree.create_job(4, &limits).unwrap();
    assert_eq!(group.stats().memory_max, None);
    drop(group);

    // With the controllers of this host, if any.
    let mut tree = Tree::at(&s.dir).unwrap();
    let daemon = s.held("echo ready; exec sleep 60");
    s.release(daemon);
    tree.setup_for(daemon).unwrap();
    let group = tree.create_job(5, &limits).unwrap();
    let read = |name: &str| fs::read_to_string(group.dir().join(name)).map(|v| v.trim().to_owned());
    if tree.memory {
        assert_eq!(read("memory.max").unwrap(), (256 << 20).to_string());
        assert_eq!(group.stats().memory_max, limits.memory_max);
    } else {
        assert!(tree.unenforced(&limits).contains(&"memory_max"));
        eprintln!("memory controller not available here: memory.max not checked");
    }
    if tree.cpu {
        assert_eq!(read("cpu.weight").unwrap(), "250");
    } else {
        assert!(tree.unenforced(&limits).contains(&"cpu_weight"));
        eprintln!("cpu controller not available here: cpu.weight not checked");
    }
}

#[test]
fn controllers_are_enabled_once_no_process_is_left_outside_the_leaf() {
    let Some(mut s) = scratch("controllers_are_enabled_once_no_process_is_left_outside_the_leaf") else {
        return;
    };
    // Any controller this host has in cgroup2 will do (memory and cpu may be in v1).
    let available = read_file(&s.dir.join("cgroup.controllers")).unwrap();
    let Some(controller) = available.split_whitespace().next().map(str::to_owned) else {
        eprintln!(
            "SKIP controllers_are_enabled_…: no controller in {}",
            s.dir.display()
        );
        return;
    };
    let mut tree = Tree::at(&s.dir).unwrap();
    let daemon = s.held("echo ready; exec sleep 60");
    move_to(&s.dir.join("cgroup.procs"), daemon);
    s.release(daemon);
    let error = tree.enable(&[&controller]).unwrap_err().to_string();
    assert!(
        error.contains(&format!("processes outside supervisor hold it: [{daemon}]")),
        "{error}"
    );
    fs::create_dir(s.dir.join(SUPERVISOR)).unwrap();
    move_to(&s.dir.join("supervisor/cgroup.procs"), daemon);
    tree.enable(&[&controller, "no-such-controller"]).unwrap();
    let enabled = read_file(&s.dir.join("cgroup.subtree_control")).unwrap();
    assert_eq!(enabled.trim(), controller);
    tree.enable(&[&controller]).unwrap();
}
