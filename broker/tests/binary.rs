//! The `herald-broker` binary: logs its bound address, stops cleanly on SIGTERM and SIGINT,
//! refuses a directory that is not its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn start(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the broker logs before exiting")
            .unwrap();
        if let Some((_, rest)) = line.split_once("listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop)); // keep draining stderr
    (child, addr)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("the broker did not exit within 10 s");
}

#[test]
fn logs_the_bound_address_and_exits_zero_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    for sig in ["TERM", "INT"] {
        let (mut child, addr) = start(&dir.path().join("data"));
        assert!(
            addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
            "{addr}"
        );
        std::net::TcpStream::connect(&addr).expect("the logged address accepts connections");
        signal(&child, sig);
        assert!(wait(&mut child).success(), "exit after SIG{sig}");
    }
}

#[test]
fn refuses_a_directory_that_is_not_herald_data() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("thesis.tex"), "precious").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald-broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a Herald data directory"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("thesis.tex")).unwrap(),
        "precious"
    );
}
