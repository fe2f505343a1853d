//! The configuration page documents every setting: each environment variable
//! that `serve --help` lists appears in `docs/configuration.md`'s settings
//! table.

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
