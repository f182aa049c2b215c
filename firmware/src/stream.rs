//! Streaming SHA-256 over readers, in fixed-size chunks: payloads never sit in memory.

use std::io::{self, Read, Write};

use ring::digest::{Context, SHA256};

/// Chunk size for payload streaming.
pub const CHUNK: usize = 256 * 1024;

/// Hashes everything `reader` yields; returns the byte count and SHA-256.
pub fn hash_reader<R: Read>(reader: &mut R) -> io::Result<(u64, [u8; 32])> {
    copy_hashing(reader, &mut io::sink(), |_| Ok(()))
}

/// Copies `reader` to `writer` while hashing it, calling `progress` with the running total
/// after each chunk is written (an error from `progress` stops the copy). Returns the byte
/// count and SHA-256 of what was copied.
pub fn copy_hashing<R: Read, W: Write>(
    reader: &mut R,
    writer: &mut W,
    mut progress: impl FnMut(u64) -> io::Result<()>,
) -> io::Result<(u64, [u8; 32])> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
        progress(total)?;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((total, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_across_chunks() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        let (n, h) = hash_reader(&mut data.as_slice()).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h.as_slice(), ring::digest::digest(&SHA256, &data).as_ref());
        let mut out = Vec::new();
        let mut calls = 0;
        let (n2, h2) = copy_hashing(&mut data.as_slice(), &mut out, |_| {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n2, h2), (n, h));
        assert_eq!(out, data);
        assert_eq!(calls, 3);
    }
}
