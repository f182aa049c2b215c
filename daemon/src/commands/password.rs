//! Reading a new password from the terminal (twice, without echo) or from stdin.

use anyhow::{Context, Result};

/// Turns terminal echo off until dropped.
struct NoEcho(Option<nix::libc::termios>);

impl NoEcho {
    fn new() -> NoEcho {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios owned here.
        unsafe {
            let mut t: nix::libc::termios = std::mem::zeroed();
            if nix::libc::tcgetattr(0, &mut t) != 0 {
                return NoEcho(None);
            }
            let saved = t;
            t.c_lflag &= !nix::libc::ECHO;
            nix::libc::tcsetattr(0, nix::libc::TCSANOW, &t);
            NoEcho(Some(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                nix::libc::tcsetattr(0, nix::libc::TCSANOW, t);
            }
        }
    }
}

/// Reads a new password: prompted twice without echo on a terminal, else the first
/// line of stdin.
pub fn read_new_password() -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let read_line = || -> Result<String> {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("read the password")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    if !stdin.is_terminal() {
        return read_line();
    }
    let first = {
        let _quiet = NoEcho::new();
        eprint!("Password (12 characters or more): ");
        std::io::stderr().flush().ok();
        let p = read_line()?;
        eprintln!();
        p
    };
    let second = {
        let _quiet = NoEcho::new();
        eprint!("Repeat it: ");
        std::io::stderr().flush().ok();
        let p = read_line()?;
        eprintln!();
        p
    };
    if first != second {
        anyhow::bail!("the passwords differ");
    }
    Ok(first)
}
