//! Globs: does a path (relative to a route's directory, or the site root) match
//! the include globs and escape the ignores? Compiled once, when the config is.
//!
//! Globs use `globset` with `*` not crossing `/` and `**` spanning directories,
//! so `**/*.md` matches `a.md` and `x/y/a.md` while `*.md` matches only the top level.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::path::Path;

/// The ignores a route has when it sets none: hidden files and folders,
/// `*.tmp`, `*~` and vim's `4913` probe file, at any depth.
pub const DEFAULT_IGNORES: [&str; 5] = ["**/.*", "**/.*/**", "**/*.tmp", "**/*~", "**/4913"];

/// The longest glob, in bytes (a path's `PATH_MAX`).
pub const MAX_GLOB_LEN: usize = 4096;

/// How deep `{…}` alternates may nest (`{a,{b,c}}` is 2 deep). `globset` recurses
/// once a level, on whatever thread loads the config: a cap keeps that in its stack.
pub const MAX_GLOB_NESTING: usize = 8;

/// At most this many characters of a glob are quoted in an error.
const QUOTED: usize = 64;

/// A glob that failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {}: {reason}", quoted(glob))]
pub struct GlobError {
    /// The glob as written.
    pub glob: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Compiled include and ignore globs of one route.
///
/// Two matchers are equal when they were built from the same glob strings.
#[derive(Debug, Clone)]
pub struct Matcher {
    include: GlobSet,
    ignore: GlobSet,
    sources: (Vec<String>, Vec<String>),
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

impl Matcher {
    /// Compiles a matcher; fails on the first invalid glob.
    pub fn new(include: &[String], ignore: &[String]) -> Result<Self, GlobError> {
        Ok(Matcher {
            include: compile(include)?,
            ignore: compile(ignore)?,
            sources: (include.to_vec(), ignore.to_vec()),
        })
    }

    /// Whether a file at `rel` (relative to the route's path) matches.
    pub fn matches(&self, rel: &Path) -> bool {
        self.check(rel) == Check::Matches
    }

    /// Why a file at `rel` matches or not: the one decision [`Matcher::matches`] is
    /// made of, with the ignore glob that excluded it.
    pub fn check(&self, rel: &Path) -> Check<'_> {
        if let Some(&first) = self.ignore.matches(rel).first() {
            return Check::Ignored(&self.sources.1[first]);
        }
        match self.include.is_match(rel) {
            true => Check::Matches,
            false => Check::NotIncluded,
        }
    }

    /// The include globs, as written.
    pub fn includes(&self) -> &[String] {
        &self.sources.0
    }

    /// Whether a directory at `rel` is ignored, so nothing under it can match
    /// and it need not be watched.
    pub fn ignores_dir(&self, rel: &Path) -> bool {
        self.ignore.is_match(rel) || self.ignore.is_match(rel.join("x"))
    }
}

/// Why a path matches a [`Matcher`] or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check<'a> {
    /// It matches an include glob and no ignore glob.
    Matches,
    /// It matches no include glob.
    NotIncluded,
    /// It matches this ignore glob (the first, in config order).
    Ignored(&'a str),
}

/// `glob` quoted for an error, cut after [`QUOTED`] characters.
fn quoted(glob: &str) -> String {
    match glob.char_indices().nth(QUOTED) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &glob[..end], glob.len()),
        None => format!("{glob:?}"),
    }
}

/// Refuses, before `globset` sees it, a glob longer than [`MAX_GLOB_LEN`] or with
/// alternates nested deeper than [`MAX_GLOB_NESTING`].
fn check_bounds(glob: &str) -> Result<(), GlobError> {
    let reason = if glob.len() > MAX_GLOB_LEN {
        format!(
            "it is {} bytes long; at most {MAX_GLOB_LEN} are allowed",
            glob.len()
        )
    } else if alternates_depth(glob) > MAX_GLOB_NESTING {
        format!("`{{…}}` alternates nest more than {MAX_GLOB_NESTING} deep")
    } else {
        return Ok(());
    };
    Err(GlobError {
        glob: glob.to_owned(),
        reason,
    })
}

/// How deep `{` alternates nest in `glob`, read as `globset` reads it: a `\` escapes
/// the next character, and a `[…]` class (where `]` may come first, after an
/// optional `!` or `^`) holds no alternates.
fn alternates_depth(glob: &str) -> usize {
    let mut chars = glob.chars().peekable();
    let (mut depth, mut deepest) = (0usize, 0usize);
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => {
                chars.next_if(|&c| c == '!' || c == '^');
                chars.next_if_eq(&']');
                chars.by_ref().find(|&c| c == ']');
            }
            '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn compile(globs: &[String]) -> Result<GlobSet, GlobError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        check_bounds(glob)?;
        let compiled = GlobBuilder::new(glob)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| GlobError {
                glob: glob.clone(),
                reason: e.kind().to_string(),
            })?;
        set.add(compiled);
    }
    set.build().map_err(|e| GlobError {
        glob: globs.join(", "),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn default_matcher(include: &[&str]) -> Matcher {
        Matcher::new(&strings(include), &strings(&DEFAULT_IGNORES)).unwrap()
    }

    #[test]
    fn double_star_matches_any_depth_and_single_star_one_level() {
        let m = default_matcher(&["**/*.md"]);
        assert!(m.matches(Path::new("a.md")));
        assert!(m.matches(Path::new("x/y/a.md")));
        assert!(!m.matches(Path::new("a.txt")));
        let top = default_matcher(&["*.md"]);
        assert!(top.matches(Path::new("a.md")));
        assert!(!top.matches(Path::new("x/a.md")));
    }

    #[test]
    fn default_ignores_hidden_temporaries_and_vim_probe() {
        let m = default_matcher(&["**"]);
        assert!(m.matches(Path::new("dir/page.html")));
        for ignored in [
            ".hidden",
            "dir/.swp",
            ".git/config",
            "a/.cache/b/c",
            "x.tmp",
            "d/x~",
            "d/4913",
        ] {
            assert!(!m.matches(Path::new(ignored)), "{ignored} should be ignored");
        }
        assert!(m.ignores_dir(Path::new(".git")));
        assert!(m.ignores_dir(Path::new("a/.cache")));
        assert!(!m.ignores_dir(Path::new("src")));
    }

    #[test]
    fn custom_ignore_replaces_default() {
        let m = Matcher::new(&strings(&["**"]), &strings(&["**/draft-*"])).unwrap();
        assert!(!m.matches(Path::new("a/draft-1.md")));
        assert!(m.matches(Path::new(".hidden")));
    }

    #[test]
    fn check_names_the_ignore_glob_that_excluded_a_path() {
        let m = Matcher::new(&strings(&["**/*.md"]), &strings(&["**/draft-*", "**/*.md"])).unwrap();
        assert_eq!(m.check(Path::new("a/draft-1.md")), Check::Ignored("**/draft-*"));
        assert_eq!(m.check(Path::new("a.txt")), Check::NotIncluded);
        let d = default_matcher(&["**/*.md"]);
        assert_eq!(d.check(Path::new("x/.git/a.md")), Check::Ignored("**/.*/**"));
        assert_eq!(d.check(Path::new("x/a.md")), Check::Matches);
        assert_eq!(d.includes(), ["**/*.md"]);
    }

    #[test]
    fn alternates_nest_up_to_the_limit() {
        let nested = |n: usize| format!("{}b{}", "{a,".repeat(n), "}".repeat(n));
        let m = Matcher::new(&[nested(MAX_GLOB_NESTING)], &[]).unwrap();
        assert!(m.matches(Path::new("b")) && m.matches(Path::new("a")));
        let err = Matcher::new(&[nested(MAX_GLOB_NESTING + 1)], &[]).unwrap_err();
        assert!(err.reason.contains("nest more than 8 deep"), "{}", err.reason);
    }

    #[test]
    fn braces_escaped_or_in_a_class_do_not_nest() {
        let deep = MAX_GLOB_NESTING + 2;
        for (brace, path) in [("\\{", "{"), ("[{]", "{"), ("[]{]", "{"), ("[!]{]", "x")] {
            let glob = brace.repeat(deep);
            let m = Matcher::new(std::slice::from_ref(&glob), &[]).unwrap();
            assert!(m.matches(Path::new(&path.repeat(deep))), "{glob}");
        }
    }

    #[test]
    fn regression_deeply_nested_alternates_are_refused_before_globset_recurses() {
        let glob = format!("{}b{}", "{".repeat(2_000), "}".repeat(2_000));
        let err = Matcher::new(&[glob], &[]).unwrap_err();
        assert!(err.reason.contains("nest more than 8 deep"), "{}", err.reason);
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn a_glob_longer_than_the_limit_is_refused() {
        let long = "a".repeat(MAX_GLOB_LEN);
        assert!(Matcher::new(std::slice::from_ref(&long), &[]).is_ok());
        let err = Matcher::new(&[long + "a"], &[]).unwrap_err();
        assert!(err.reason.contains("4097 bytes long"), "{}", err.reason);
    }

    #[test]
    fn invalid_glob_is_reported_with_its_text() {
        let err = Matcher::new(&strings(&["a/[b"]), &[]).unwrap_err();
        assert_eq!(err.glob, "a/[b");
        assert!(err.reason.contains("unclosed"), "{}", err.reason);
    }
}
