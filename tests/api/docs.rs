//! The docs hold together: each environment variable that `serve --help`
//! lists appears in `docs/configuration.md`'s settings table, and every
//! relative link of every Markdown page resolves.

use crate::common;

use std::process::Command;

#[test]
fn every_setting_is_in_the_configuration_page() {
    let help = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let page = std::fs::read_to_string(common::repo_path("docs/configuration.md")).unwrap();
    let variables: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    assert!(variables.len() > 20, "{variables:?}");
    for variable in variables {
        assert!(
            page.contains(&format!("`{variable}`")),
            "{variable} is not in docs/configuration.md"
        );
    }
}

/// Every relative link of the repository's Markdown pages reaches a file,
/// and its `#anchor` a heading of that page (as GitHub makes anchors of
/// headings): the pages point at each other and at the files they describe,
/// and a rename or a reworded heading must not leave a reader at a dead end.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = common::repo_path("");
    let mut pages = Vec::new();
    markdown_files(&root, &mut pages);
    assert!(pages.len() > 10, "{pages:?}");
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let shown = page.strip_prefix(&root).unwrap().display().to_string();
            if !file.exists() {
                broken.push(format!("{shown}: {target}: no such file"));
            } else if !anchor.is_empty()
                && file.extension().is_some_and(|e| e == "md")
                && !heading_anchors(&std::fs::read_to_string(&file).unwrap())
                    .contains(&anchor.to_owned())
            {
                broken.push(format!("{shown}: {target}: no such heading"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The Markdown files of the repository, outside build output and
/// virtual environments.
fn markdown_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The targets of the inline links `[text](target)` outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in outside_code(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].trim().to_owned());
                rest = &rest[end..];
            }
        }
    }
    targets
}

/// The anchors GitHub gives a page's ATX headings (github-slugger): the
/// heading's text (a link's text, not its target; no closing `#`s, no
/// emphasis marks) in lower case, spaces to `-`, punctuation other than `-`
/// and `_` dropped; a repeated one gets `-1`, `-2`, ... , the first not taken.
fn heading_anchors(text: &str) -> Vec<String> {
    let mut anchors: Vec<String> = Vec::new();
    for line in outside_code(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let heading = heading.trim().trim_end_matches('#').trim_end();
        let slug: String = rendered(heading)
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut repeat = 0;
        while anchors.contains(&anchor) {
            repeat += 1;
            anchor = format!("{slug}-{repeat}");
        }
        anchors.push(anchor);
    }
    anchors
}

/// A heading's text as rendered: links by their text, emphasis marks
/// (`*`, and `_` around a word) dropped.
fn rendered(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|at| open + at) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|at| close + at) else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out.split(' ')
        .map(|word| word.trim_matches('_').replace('*', ""))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    let page = "# Title\n## `bench/run`: the bridge\n## See [ACLs](security.md)\n\
                ## The _spool_ ##\n## Limits 2\n## Limits\n## Limits\n```\n# not one\n```\n";
    assert_eq!(
        heading_anchors(page),
        [
            "title",
            "benchrun-the-bridge",
            "see-acls",
            "the-spool",
            "limits-2",
            "limits",
            "limits-1"
        ]
    );
}

/// The lines of `text` outside fenced code blocks.
fn outside_code(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}
