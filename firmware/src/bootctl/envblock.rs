//! The GRUB environment block format, parsed and rebuilt the way GRUB's `save_env` and
//! `grub-editenv` see it (`grub-core/lib/envblk.c`):
//!
//! ```text
//! # GRUB Environment Block\n     signature, always first
//! # any comment line\n            kept as it is
//! name=value\n                    one variable; `\` and newline in a value escaped by `\`
//! ####...#                        padding to the block's fixed size (normally 1024 bytes)
//! ```
//!
//! A rebuilt block has exactly the size of the block it replaces, so it can be written in
//! place over the old one, as GRUB's `save_env` does, without truncating the file.

use std::collections::BTreeMap;

/// The first line of every environment block.
pub const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";

/// Why bytes are not a usable environment block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The bytes do not start with [`SIGNATURE`] (an empty or overwritten file).
    #[error("it does not start with {:?}", String::from_utf8_lossy(SIGNATURE).trim_end())]
    Signature,
    /// The last line is not ended by a newline before the `#` padding.
    #[error("its last line is cut off before the '#' padding")]
    Unterminated,
    /// A line is neither a comment nor `name=value`.
    #[error("line {0} is neither a comment nor name=value")]
    Malformed(usize),
    /// The new variables do not fit the block's size.
    #[error("the variables need {needed} bytes, the block holds {size}")]
    Full {
        /// Bytes the rebuilt block would need.
        needed: usize,
        /// The block's fixed size.
        size: usize,
    },
}

/// One line of the block, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A comment (starts with `#`), kept byte for byte.
    Comment(Vec<u8>),
    /// `name=value`, the value kept escaped as stored.
    Var { name: Vec<u8>, raw: Vec<u8> },
}

/// A parsed environment block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvBlock {
    lines: Vec<Line>,
    size: usize,
}

/// Splits `text` into lines at newlines that are not escaped by a backslash.
fn split_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 1,
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    lines
}

fn escape(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for b in value.bytes() {
        if b == b'\\' || b == b'\n' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn unescape(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next) = bytes.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl EnvBlock {
    /// Parses a whole block file.
    pub fn parse(bytes: &[u8]) -> Result<EnvBlock, BlockError> {
        let body = bytes.strip_prefix(SIGNATURE).ok_or(BlockError::Signature)?;
        // The free space is the run of '#' at the end; GRUB's `set` needs a newline
        // right before it (the signature's own newline counts).
        let used = body.len() - body.iter().rev().take_while(|&&b| b == b'#').count();
        let content = &body[..used];
        if !content.is_empty() && content.last() != Some(&b'\n') {
            return Err(BlockError::Unterminated);
        }
        let mut lines = Vec::new();
        for (i, line) in split_lines(content).into_iter().enumerate() {
            if line.first() == Some(&b'#') {
                lines.push(Line::Comment(line.to_vec()));
                continue;
            }
            match line.iter().position(|&b| b == b'=') {
                Some(eq) if eq > 0 => lines.push(Line::Var {
                    name: line[..eq].to_vec(),
                    raw: line[eq + 1..].to_vec(),
                }),
                // Line numbers count the signature as line 1.
                _ => return Err(BlockError::Malformed(i + 2)),
            }
        }
        Ok(EnvBlock {
            lines,
            size: bytes.len(),
        })
    }

    /// The block's size in bytes, padding included.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The variables, unescaped; of a name set twice, the first (as GRUB reads it).
    pub fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        for line in &self.lines {
            if let Line::Var { name, raw } = line {
                vars.entry(String::from_utf8_lossy(name).into_owned())
                    .or_insert_with(|| unescape(raw));
            }
        }
        vars
    }

    /// Sets `name` to `value` (removes it for `None`), in place where it stands, else
    /// after the last line. Other variables and comments are kept as they are.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let mut replaced = false;
        self.lines.retain_mut(|line| match line {
            Line::Var { name: n, raw } if n.as_slice() == name.as_bytes() => {
                match value {
                    Some(v) if !replaced => {
                        *raw = escape(v);
                        replaced = true;
                        true
                    }
                    // A second copy of the name, or a removal.
                    _ => false,
                }
            }
            _ => true,
        });
        if let (Some(v), false) = (value, replaced) {
            self.lines.push(Line::Var {
                name: name.as_bytes().to_vec(),
                raw: escape(v),
            });
        }
    }

    /// The block as bytes, padded with `#` to exactly [`EnvBlock::size`]; an error when the
    /// lines do not fit.
    pub fn encode(&self) -> Result<Vec<u8>, BlockError> {
        let mut out = SIGNATURE.to_vec();
        for line in &self.lines {
            match line {
                Line::Comment(text) => out.extend_from_slice(text),
                Line::Var { name, raw } => {
                    out.extend_from_slice(name);
                    out.push(b'=');
                    out.extend_from_slice(raw);
                }
            }
            out.push(b'\n');
        }
        if out.len() > self.size {
            return Err(BlockError::Full {
                needed: out.len(),
                size: self.size,
            });
        }
        out.resize(self.size, b'#');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `grub-editenv FILE create` (GRUB 2.06) writes.
    fn created() -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(
            b"# WARNING: Do not edit this file by tools other than grub-editenv!!!\n",
        );
        b.resize(1024, b'#');
        b
    }

    #[test]
    fn sets_replaces_and_removes_in_place_keeping_size_and_comments() {
        let mut block = EnvBlock::parse(&created()).unwrap();
        assert!(block.vars().is_empty());
        block.set("saved_entry", Some("0"));
        block.set("duli_active", Some("A"));
        block.set("duli_target", Some("B"));
        let bytes = block.encode().unwrap();
        assert_eq!(bytes.len(), 1024);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with(
                "# GRUB Environment Block\n# WARNING: Do not edit this file by tools other \
                 than grub-editenv!!!\nsaved_entry=0\nduli_active=A\nduli_target=B\n##"
            ),
            "{text}"
        );
        let mut again = EnvBlock::parse(&bytes).unwrap();
        again.set("duli_active", Some("B"));
        again.set("saved_entry", None);
        let vars = EnvBlock::parse(&again.encode().unwrap()).unwrap().vars();
        assert_eq!(vars.get("duli_active").map(String::as_str), Some("B"));
        assert_eq!(vars.get("duli_target").map(String::as_str), Some("B"));
        assert!(!vars.contains_key("saved_entry"));
    }

    #[test]
    fn escapes_round_trip() {
        let mut block = EnvBlock::parse(&created()).unwrap();
        block.set("odd", Some("a\\b\nc=d"));
        let bytes = block.encode().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("odd=a\\\\b\\\nc=d\n"));
        let vars = EnvBlock::parse(&bytes).unwrap().vars();
        assert_eq!(vars["odd"], "a\\b\nc=d");
    }

    #[test]
    fn refuses_damaged_blocks_and_overflow() {
        assert_eq!(EnvBlock::parse(b""), Err(BlockError::Signature));
        assert_eq!(EnvBlock::parse(&[0u8; 1024]), Err(BlockError::Signature));
        let mut cut = SIGNATURE.to_vec();
        cut.extend_from_slice(b"duli_active=A");
        assert_eq!(EnvBlock::parse(&cut), Err(BlockError::Unterminated));
        let mut junk = SIGNATURE.to_vec();
        junk.extend_from_slice(b"no equals sign\n####");
        assert_eq!(EnvBlock::parse(&junk), Err(BlockError::Malformed(2)));

        let mut block = EnvBlock::parse(&created()).unwrap();
        block.set("big", Some(&"x".repeat(2000)));
        assert!(matches!(
            block.encode(),
            Err(BlockError::Full { size: 1024, .. })
        ));
        // Exactly full: no padding left, still valid.
        let mut tight = SIGNATURE.to_vec();
        tight.extend_from_slice(b"a=1\n");
        let mut block = EnvBlock::parse(&tight).unwrap();
        block.set("a", Some("2"));
        assert_eq!(block.encode().unwrap(), b"# GRUB Environment Block\na=2\n");
    }
}
