//! Reading a new password from the terminal (twice, without echo) or from stdin.

use anyhow::{Context, Result};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

/// Turns terminal echo off until dropped.
struct NoEcho(Option<Termios>);

impl NoEcho {
    fn new() -> NoEcho {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return NoEcho(None);
        };
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        if termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).is_err() {
            return NoEcho(None);
        }
        NoEcho(Some(saved))
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
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
