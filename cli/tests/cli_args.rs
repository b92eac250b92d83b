//! The `herald` command line: argument errors exit non-zero with a message.

use std::process::Command;

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_commands() {
    let out = herald(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["topic", "publish", "consume"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn missing_arguments_are_usage_errors() {
    for args in [
        &["publish"][..],
        &["consume", "t"],
        &["topic", "create"],
        &["consume", "t", "--group", "g", "--mode", "sideways"],
    ] {
        let out = herald(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn an_unreachable_broker_is_reported() {
    let out = herald(&["--broker", "127.0.0.1:1", "topic", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to 127.0.0.1:1"));
}
