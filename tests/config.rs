//! `herald-broker`'s settings from a TOML file, `HERALD_*` variables and flags: flags win
//! over variables, variables over the file, the file over the defaults.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use herald_suite::binary;

/// Starts `herald-broker` with `args` and `env` (and no other `HERALD_*` variable but the
/// HTTP gateway's address), and
/// returns its "listening on" log line, or its error output if it exits.
fn started(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(binary("herald-broker"));
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("HERALD_")) {
        command.env_remove(name);
    }
    // Its HTTP gateway on a free port: a broker already running here must not matter.
    command
        .env("RUST_LOG", "info")
        .env("HERALD_HTTP_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied());
    let mut child = command.spawn().expect("herald-broker runs");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            return line;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    format!("exited {status}: {seen}")
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_env, from_flag) = (
        dir.path().join("file-data"),
        dir.path().join("env-data"),
        dir.path().join("flag-data"),
    );
    let file = dir.path().join("herald.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nfsync = \"never\"\ndata_dir = \"{}\"\n",
            from_file.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let defaults = dir.path().join("default-data");

    let line = started(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            defaults.to_str().unwrap(),
        ],
        &[],
    );
    assert!(line.contains("fsync=\"always\""), "the default: {line}");

    let line = started(&["--config", file], &[]);
    assert!(line.contains("fsync=\"never\""), "the file: {line}");
    assert!(line.contains(from_file.to_str().unwrap()), "{line}");

    let env_dir = from_env.to_str().unwrap();
    let env = [("HERALD_FSYNC", "interval"), ("HERALD_DATA_DIR", env_dir)];
    let line = started(&["--config", file], &env);
    assert!(
        line.contains("fsync=\"interval\""),
        "the environment: {line}"
    );
    assert!(line.contains(env_dir), "{line}");

    let flag_dir = from_flag.to_str().unwrap();
    let line = started(
        &[
            "--config",
            file,
            "--fsync",
            "always",
            "--data-dir",
            flag_dir,
        ],
        &env,
    );
    assert!(line.contains("fsync=\"always\""), "the flag: {line}");
    assert!(line.contains(flag_dir), "{line}");

    // The file can also come from the environment.
    let line = started(&[], &[("HERALD_CONFIG", file)]);
    assert!(line.contains("fsync=\"never\""), "{line}");
}

/// Runs `herald-broker --config` on a file holding `text`; expects exit 2 and returns its
/// error output.
fn refused(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, text).unwrap();
    let output = Command::new(binary("herald-broker"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_file_is_refused_with_the_key_named() {
    let stderr = refused("listen = \"127.0.0.1:0\"\nmax_conections = 10\n");
    assert!(
        stderr.contains("unknown field `max_conections`"),
        "{stderr}"
    );
    assert!(stderr.contains("herald.toml"), "{stderr}");
    let stderr = refused("fsync = \"sometimes\"\n");
    assert!(stderr.contains("fsync = \"sometimes\""), "{stderr}");
}
