//! Generates what the Debian package installs besides the binaries: man pages
//! (`execlibd.8` and `execlibctl.1` from the clap definitions, `execlib.toml.5` from
//! docs/configuration.md, `execlib-troubleshooting.7` from docs/troubleshooting.md)
//! and bash/zsh/fish completions.
//!
//! `cargo run --example package_assets -- OUT_DIR` (packaging/build-deb.sh runs it).

use clap::CommandFactory;
use clap_complete::Shell;
use execlib::cli::{CtlCli, DaemonCli};
use std::path::Path;

fn main() -> std::io::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "target/assets".into());
    let out = Path::new(&out);
    for dir in ["man", "completions"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    for (cmd, section) in [(DaemonCli::command(), "8"), (CtlCli::command(), "1")] {
        let name = cmd.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section(section)
            .render(&mut page)?;
        std::fs::write(out.join(format!("man/{name}.{section}")), page)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut script);
            let file = match shell {
                Shell::Zsh => format!("_{name}"),
                Shell::Fish => format!("{name}.fish"),
                _ => name.clone(),
            };
            std::fs::write(out.join("completions").join(file), script)?;
        }
    }
    let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md"))?;
    let head = format!(
        ".TH EXECLIB.TOML 5 \"\" \"execlib {}\" \"File Formats\"\n.SH NAME\nexeclib.toml \\- configuration of an execlib instance\n.SH SYNOPSIS\n/etc/execlib/\\fINAME\\fR.toml\n",
        env!("CARGO_PKG_VERSION")
    );
    std::fs::write(out.join("man/execlib.toml.5"), markdown_page(head, &reference))?;
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/troubleshooting.md"))?;
    let head = format!(
        ".TH EXECLIB-TROUBLESHOOTING 7 \"\" \"execlib {}\" \"Miscellaneous\"\n.SH NAME\nexeclib-troubleshooting \\- why a job did or did not run, limits, permissions, the journal and the metrics\n",
        env!("CARGO_PKG_VERSION")
    );
    std::fs::write(
        out.join("man/execlib-troubleshooting.7"),
        markdown_page(head, &guide),
    )?;
    println!("wrote man pages and completions under {}", out.display());
    Ok(())
}

/// A page of docs/ as roff after `head` (its `.TH`, NAME and SYNOPSIS):
/// execlib.toml(5), execlib-troubleshooting(7).
fn markdown_page(head: String, markdown: &str) -> String {
    let mut roff = head;
    let mut code = false;
    let mut table_row = 0;
    for line in markdown.lines() {
        if line.starts_with("```") {
            roff.push_str(if code { ".fi\n.RE\n" } else { ".RS 2\n.nf\n" });
            code = !code;
            continue;
        }
        if code {
            roff.push_str(&escape_line(line));
            roff.push('\n');
            continue;
        }
        let trimmed = line.trim_start();
        if !trimmed.starts_with('|') {
            table_row = 0;
        }
        if let Some(h) = line.strip_prefix("## ") {
            roff.push_str(&format!(".SH {}\n", inline(h).to_uppercase()));
        } else if let Some(h) = line.strip_prefix("### ") {
            roff.push_str(&format!(".SS {}\n", inline(h)));
        } else if line.starts_with("# ") {
            roff.push_str(".SH DESCRIPTION\n");
        } else if trimmed.is_empty() {
            roff.push_str(".PP\n");
        } else if trimmed.starts_with('|') {
            table_row += 1;
            let cells: Vec<&str> = trimmed.trim_matches('|').split(" | ").map(str::trim).collect();
            if table_row > 2 {
                roff.push_str(&format!(
                    ".TP\n{}\n{}\n",
                    inline(cells[0]),
                    inline(&cells[1..].join("; "))
                ));
            }
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            roff.push_str(&format!(".IP \\(bu 2\n{}\n", inline(item)));
        } else if let Some((n, item)) = numbered(trimmed) {
            roff.push_str(&format!(".IP {n}. 4\n{}\n", inline(item)));
        } else {
            roff.push_str(&inline(trimmed));
            roff.push('\n');
        }
    }
    roff
}

/// `N. text` as (N, text).
fn numbered(line: &str) -> Option<(&str, &str)> {
    let (n, rest) = line.split_once(". ")?;
    n.chars().all(|c| c.is_ascii_digit()).then_some((n, rest))
}

/// A line of literal text: backslashes escaped, no control character at its start.
fn escape_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Inline markdown: `code` and **bold** in bold, [text](link) as text.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = escape_line(text);
    while let Some(start) = rest.find('[') {
        let Some(mid) = rest[start..].find("](") else {
            break;
        };
        let Some(end) = rest[start + mid..].find(')') else {
            break;
        };
        let label = rest[start + 1..start + mid].to_owned();
        rest = format!("{}{}{}", &rest[..start], label, &rest[start + mid + end + 1..]);
    }
    let (mut bold, mut code) = (false, false);
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        // `**` inside a code span is text (a glob), not bold.
        let toggle = c == '`' || (!code && c == '*' && chars.peek() == Some(&'*'));
        if c == '*' && toggle {
            chars.next();
        }
        code ^= c == '`';
        if toggle {
            out.push_str(if bold { "\\fR" } else { "\\fB" });
            bold = !bold;
        } else {
            out.push(c);
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    out
}
