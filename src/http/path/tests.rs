//! The request-path resolver on a tree with symlinks of every kind, through the
//! one-call path and the component walk alike, and fuzzed.

use super::*;
use std::io::Read;
use std::os::unix::fs::symlink;

/// A site with relative and absolute symlinks inside and outside the root.
fn site() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let root = base.join("root");
    for d in ["docs/.hidden", "sub", "plain"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(base.join("outside")).unwrap();
    for (file, body) in [
        ("root/index.html", "home"),
        ("root/docs/index.html", "docs"),
        ("root/docs/a b.html", "spaced"),
        ("root/sub/page.html", "page"),
        ("root/sub/index.html", "sub"),
        ("root/.env", "secret"),
        ("root/docs/.hidden/x", "secret"),
        ("outside.txt", "secret"),
        ("outside/index.html", "secret"),
        ("outside/page.html", "secret"),
    ] {
        std::fs::write(base.join(file), body).unwrap();
    }
    let links: [(&str, PathBuf); 14] = [
        ("escape_abs.txt", base.join("outside.txt")),
        ("escape_rel.txt", "../outside.txt".into()),
        ("escape_dir", "../outside".into()),
        ("escape_dir_abs", base.join("outside")),
        ("alias_abs.html", root.join("index.html")),
        ("alias_rel.html", "index.html".into()),
        ("docs/up.html", "../index.html".into()),
        ("docs/deep", "../sub".into()),
        ("docs/deep_abs", root.join("sub")),
        ("docs/parent", "..".into()),
        ("env.txt", ".env".into()),
        ("loop", "loop".into()),
        ("sneaky", "sub/../../outside.txt".into()),
        ("abs_dotdot", root.join("../outside.txt")),
    ];
    for (link, target) in links {
        symlink(target, root.join(link)).unwrap();
    }
    (dir, root)
}

/// What a request gets: the body, `redirect:TO`, `404` or `400`; and whether the
/// answer came without crossing a symlink.
fn answer(opened: Opened) -> (String, bool) {
    match opened {
        Opened::File { mut file, direct, .. } => {
            let mut body = String::new();
            file.read_to_string(&mut body).unwrap();
            (body, direct)
        }
        Opened::Redirect(to) => (format!("redirect:{to}"), true),
        Opened::NotFound => ("404".into(), true),
        Opened::BadRequest => ("400".into(), true),
    }
}

/// The same request through the component walk only (as on a kernel without openat2).
fn walked(root: &Path, raw: &str, hidden: bool) -> String {
    let Ok((decoded, mut names)) = checked(raw, hidden) else {
        return answer(checked(raw, hidden).unwrap_err()).0;
    };
    let root_dir = File::open(root).unwrap();
    let body = |end: Option<End>| match end {
        Some(End::File { file, .. }) => {
            answer(Opened::File {
                file,
                real: PathBuf::new(),
                direct: true,
            })
            .0
        }
        _ => "404".into(),
    };
    match walk(&root_dir, root, &names, hidden) {
        Some(End::Dir) if !decoded.ends_with('/') => format!("redirect:{}", redirect_to(raw)),
        Some(End::Dir) => {
            names.push("index.html".into());
            body(walk(&root_dir, root, &names, hidden))
        }
        Some(End::File { .. }) if decoded.ends_with('/') => "404".into(),
        end => body(end),
    }
}

#[test]
fn symlinks_inside_are_followed_and_outside_refused_on_both_paths() {
    let (_dir, root) = site();
    let cases = [
        ("/", "home", true),
        ("/docs/", "docs", true),
        ("/docs", "redirect:/docs/", true),
        ("/docs/a%20b.html", "spaced", true),
        ("/alias_abs.html", "home", false),
        ("/alias_rel.html", "home", false),
        ("/docs/up.html", "home", false),
        ("/docs/deep/page.html", "page", false),
        ("/docs/deep_abs/page.html", "page", false),
        ("/docs/deep/", "sub", false),
        ("/docs/parent/", "home", false),
        ("/escape_abs.txt", "404", true),
        ("/escape_rel.txt", "404", true),
        ("/escape_dir/page.html", "404", true),
        ("/escape_dir/", "404", true),
        ("/escape_dir_abs/page.html", "404", true),
        ("/sneaky", "404", true),
        ("/abs_dotdot", "404", true),
        ("/loop", "404", true),
        ("/missing", "404", true),
        ("/index.html/", "404", true),
        ("/docs/index.html/", "404", true),
    ];
    for (raw, want, direct) in cases {
        assert_eq!(
            answer(open(&root, raw, false)),
            (want.to_owned(), direct),
            "{raw}"
        );
        assert_eq!(walked(&root, raw, false), want, "{raw} (walk)");
    }
}

#[test]
fn the_direct_check_refuses_symlinks_with_and_without_openat2() {
    let (_dir, root) = site();
    for (raw, direct) in [
        ("/index.html", true),
        ("/docs/", true),
        ("/alias_rel.html", false),
        ("/docs/deep/page.html", false),
        ("/missing", false),
    ] {
        let with = direct_metadata(&root, raw, false).map(|m| m.ino());
        let mut path = root.join(raw.trim_start_matches('/'));
        if raw.ends_with('/') {
            path.push("index.html");
        }
        let without = direct_walk(&path).map(|m| m.ino());
        assert_eq!(with.is_some(), direct, "{raw}");
        assert_eq!(with, without, "{raw}: the walk agrees");
    }
}

#[test]
fn hidden_targets_stay_hidden_unless_allowed() {
    let (_dir, root) = site();
    for raw in ["/.env", "/env.txt", "/docs/.hidden/x"] {
        assert_eq!(answer(open(&root, raw, false)).0, "404", "{raw}");
        assert_eq!(walked(&root, raw, false), "404", "{raw} (walk)");
        assert_eq!(answer(open(&root, raw, true)).0, "secret", "{raw} hidden=true");
        assert_eq!(walked(&root, raw, true), "secret", "{raw} hidden=true (walk)");
    }
}

#[test]
fn a_named_pipe_is_not_served_and_does_not_block() {
    let (_dir, root) = site();
    crate::sys::mkfifo(&root.join("pipe"), 0o644).unwrap();
    symlink("pipe", root.join("pipe_link")).unwrap();
    assert_eq!(answer(open(&root, "/pipe", false)).0, "404");
    assert_eq!(answer(open(&root, "/pipe_link", false)).0, "404");
}

#[test]
fn traversal_in_every_spelling_is_refused() {
    let (_dir, root) = site();
    for attack in [
        "/../outside.txt",
        "/docs/../../outside.txt",
        "/%2e%2e/outside.txt",
        "/%2E%2E/outside.txt",
        "/%2e./outside.txt",
        "/.%2e/outside.txt",
        "/..%2foutside.txt",
        "/..%2Foutside.txt",
        "/..\\outside.txt",
        "/..%5coutside.txt",
        "/%252e%252e/outside.txt",
        "/%25%32%65%25%32%65/outside.txt",
        "/docs/%00",
        "/%c0%ae%c0%ae/outside.txt",
        "relative/path",
    ] {
        let got = answer(open(&root, attack, false)).0;
        assert!(got == "400" || got == "404", "{attack}: {got}");
    }
    assert_eq!(
        answer(open(&root, "//docs", false)).0,
        "redirect:/docs/",
        "never //host"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Segments that mean something in the fixture, and some that attack it.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("docs".to_owned()),
            Just("sub".to_owned()),
            Just("escape_dir".to_owned()),
            Just("docs/deep".to_owned()),
            Just("docs/parent".to_owned()),
            Just("sneaky".to_owned()),
            Just("loop".to_owned()),
            Just("env.txt".to_owned()),
            Just(".env".to_owned()),
            Just("..".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("index.html".to_owned()),
            Just("page.html".to_owned()),
            Just("".to_owned()),
            "[a-z%./\\\\]{0,6}",
        ]
    }

    proptest! {
        /// Whatever is asked, what is opened is a file whose real path lies under the
        /// root and (without `hidden`) has no hidden component; the walk agrees with
        /// the one-call path.
        #[test]
        fn nothing_outside_or_hidden_is_ever_opened(
            segments in proptest::collection::vec(segment(), 0..6),
            slash in any::<bool>(),
            hidden in any::<bool>(),
        ) {
            let (_dir, root) = site();
            let raw = format!("/{}{}", segments.join("/"), if slash { "/" } else { "" });
            if let Opened::File { file, .. } = open(&root, &raw, hidden) {
                use std::os::fd::AsRawFd;
                let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
                let rel = real.strip_prefix(&root);
                prop_assert!(rel.is_ok(), "{raw} opened {real:?}");
                let hidden_part = rel.unwrap().components().any(|c| c.as_os_str().as_bytes()[0] == b'.');
                prop_assert!(hidden || !hidden_part, "{raw} opened hidden {real:?}");
            }
            prop_assert_eq!(answer(open(&root, &raw, hidden)).0, walked(&root, &raw, hidden), "{}", raw);
        }
    }
}
