//! The floor for any extra stdio hop: spawns `COMMAND [ARGS...]` and copies bytes both ways,
//! one thread per direction, with nothing else. The proxy latency benchmark compares the proxy
//! against this.
//!
//! ```text
//! byte_relay COMMAND [ARGS...]
//! ```

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: byte_relay COMMAND [ARGS...]");
        return std::process::ExitCode::from(2);
    };
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let to_child = child.stdin.take().unwrap();
    let from_child = child.stdout.take().unwrap();
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().unwrap());
    std::thread::spawn(move || copy(stdin, to_child));
    copy(from_child, stdout);
    let status = child.wait().expect("wait for the server");
    std::process::ExitCode::from(status.code().unwrap_or(1) as u8)
}
