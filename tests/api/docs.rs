//! The README documents every setting: each environment variable that
//! `serve --help` lists appears in the README's configuration table.

use crate::common;

use std::process::Command;

#[test]
fn every_setting_is_in_the_readme() {
    let help = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let readme = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    let variables: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    assert!(variables.len() > 20, "{variables:?}");
    for variable in variables {
        assert!(
            readme.contains(&format!("`{variable}`")),
            "{variable} is not in the README"
        );
    }
}
