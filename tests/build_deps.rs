//! `scripts/build-deps.sh`, which `make build`, `make test` and `.ci/run` call so that a fresh
//! Debian/Ubuntu machine with only Rust and make builds: run against stand-ins for `id`,
//! `apt-get`, `sudo` and the build tools, on a PATH that holds nothing else.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A program found on the test's own PATH (the stand-ins need a few real ones).
fn real(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

fn write_program(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    let text = format!("#!{}\n{body}\n", real("bash").display());
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A machine as the script sees it: `present` tools, a user id, and whether sudo exists.
/// `apt-get` and `sudo` log their command lines to `calls`; `apt-get install` "installs" a
/// package by creating its tool.
struct Machine {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    calls: PathBuf,
}

impl Machine {
    fn new(present: &[&str], uid: u32, sudo: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let calls = dir.path().join("calls");
        for tool in present {
            write_program(&bin, tool, "exit 0");
        }
        write_program(&bin, "id", &format!("echo {uid}"));
        std::os::unix::fs::symlink(real("env"), bin.join("env")).unwrap();
        let log = |name: &str| format!("echo \"{name} $*\" >> {}", calls.display());
        let chmod = real("chmod");
        write_program(
            &bin,
            "apt-get",
            &format!(
                "{}\n[ \"$1\" = install ] || exit 0\nfor p in \"$@\"; do case $p in -*|install) ;; \
                 *) t=$p; [ $p = gcc ] && t=cc; echo 'exit 0' > {bin}/$t; {chmod} +x {bin}/$t ;; \
                 esac; done",
                log("apt-get"),
                bin = bin.display(),
                chmod = chmod.display()
            ),
        );
        if sudo {
            write_program(&bin, "sudo", &format!("{}\nexec \"$@\"", log("sudo")));
        }
        Self {
            _dir: dir,
            bin,
            calls,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(real("bash"))
            .arg(repo_file("scripts/build-deps.sh"))
            .args(args)
            .env_clear()
            .env("PATH", &self.bin)
            .output()
            .unwrap()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn nothing_happens_when_every_tool_is_there() {
    let m = Machine::new(&["cmake", "nasm", "cc"], 1000, false);
    let out = m.run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert!(m.calls().is_empty(), "{:?}", m.calls());
}

#[test]
fn root_installs_what_is_missing_with_apt_get() {
    let m = Machine::new(&["cmake"], 0, false);
    let out = m.run(&["make"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        m.calls(),
        [
            "apt-get update -qq",
            "apt-get install -y -qq --no-install-recommends make nasm gcc"
        ]
    );
    // Installed now: a second run does nothing.
    let again = m.run(&["make"]);
    assert!(again.status.success());
    assert_eq!(m.calls().len(), 2);
}

#[test]
fn a_user_installs_through_sudo() {
    let m = Machine::new(&["cc"], 1000, true);
    let out = m.run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = m.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[0].starts_with("sudo env DEBIAN_FRONTEND=noninteractive apt-get update"));
    assert!(calls[3].ends_with("apt-get install -y -qq --no-install-recommends cmake nasm"));
    assert!(stderr(&out).contains("sudo apt-get"), "{}", stderr(&out));
}

#[test]
fn without_root_or_sudo_it_prints_the_one_command_to_run() {
    let m = Machine::new(&["cmake", "cc"], 1000, false);
    let out = m.run(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("as root, run: apt-get update && apt-get install -y nasm"),
        "{err}"
    );
    assert!(m.calls().is_empty(), "{:?}", m.calls());
}

#[test]
fn a_failed_install_says_what_to_run() {
    let m = Machine::new(&["cmake", "cc"], 0, false);
    write_program(&m.bin, "apt-get", "exit 100");
    let out = m.run(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("could not install them"), "{err}");
    assert!(err.contains("apt-get install -y nasm"), "{err}");
}
