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

/// A glob that failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {glob:?}: {reason}")]
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

fn compile(globs: &[String]) -> Result<GlobSet, GlobError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
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
    fn invalid_glob_is_reported_with_its_text() {
        let err = Matcher::new(&strings(&["a/[b"]), &[]).unwrap_err();
        assert_eq!(err.glob, "a/[b");
        assert!(err.reason.contains("unclosed"), "{}", err.reason);
    }
}
