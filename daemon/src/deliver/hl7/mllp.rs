//! MLLP framing (HL7 v2 over TCP): `0x0B` payload `0x1C 0x0D`. An encoder, and an
//! incremental decoder that takes bytes as they arrive and yields whole frames, with a size
//! cap so a peer cannot make it buffer without bound.

/// Start block.
pub const START: u8 = 0x0B;
/// End block.
pub const END: u8 = 0x1C;
/// Carriage return after the end block.
pub const CR: u8 = 0x0D;
/// Default cap on one frame's payload (1 MiB; an ACK is a few hundred bytes).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Why a byte stream is not valid MLLP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MllpError {
    /// A byte other than whitespace arrived outside a frame.
    #[error("unexpected byte 0x{0:02X} outside an MLLP frame")]
    OutsideFrame(u8),
    /// The end block was followed by something other than CR.
    #[error("end block followed by 0x{0:02X} instead of CR")]
    BadTrailer(u8),
    /// A start block arrived inside a frame.
    #[error("start block inside a frame")]
    NestedStart,
    /// The frame grew past the cap.
    #[error("MLLP frame exceeds {0} bytes")]
    TooLarge(usize),
}

/// Wraps a payload in an MLLP frame.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START);
    out.extend_from_slice(payload);
    out.push(END);
    out.push(CR);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames.
    Idle,
    /// After a start block.
    InFrame,
    /// After an end block, waiting for CR.
    AfterEnd,
}

/// Incremental MLLP decoder. Feed bytes with [`Decoder::push`]; take frames with
/// [`Decoder::next_frame`]. After an error the decoder is reset to between frames.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    state: State,
    current: Vec<u8>,
    input: std::collections::VecDeque<u8>,
}

impl Decoder {
    /// A decoder whose frames may hold at most `max_frame` payload bytes.
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            max: max_frame,
            state: State::Idle,
            current: Vec::new(),
            input: Default::default(),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend(bytes);
    }

    /// Whether a frame has started and not ended yet.
    pub fn in_frame(&self) -> bool {
        self.state != State::Idle
    }

    /// The next complete frame's payload, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, MllpError> {
        while let Some(b) = self.input.pop_front() {
            match self.state {
                State::Idle => match b {
                    START => self.state = State::InFrame,
                    b'\r' | b'\n' | b' ' | b'\t' => {}
                    other => return Err(self.fail(MllpError::OutsideFrame(other))),
                },
                State::InFrame => match b {
                    END => self.state = State::AfterEnd,
                    START => return Err(self.fail(MllpError::NestedStart)),
                    other => {
                        if self.current.len() >= self.max {
                            let max = self.max;
                            return Err(self.fail(MllpError::TooLarge(max)));
                        }
                        self.current.push(other);
                    }
                },
                State::AfterEnd => {
                    if b != CR {
                        return Err(self.fail(MllpError::BadTrailer(b)));
                    }
                    self.state = State::Idle;
                    return Ok(Some(std::mem::take(&mut self.current)));
                }
            }
        }
        Ok(None)
    }

    fn fail(&mut self, e: MllpError) -> MllpError {
        self.state = State::Idle;
        self.current.clear();
        e
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_FRAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_wraps_payload() {
        assert_eq!(encode(b"MSH|x"), b"\x0bMSH|x\x1c\x0d");
    }

    #[test]
    fn decoder_reassembles_frames_split_anywhere() {
        let mut stream = encode(b"MSH|1\rMSA|AA|1\r");
        stream.extend(encode(b"MSH|2"));
        for split in 0..stream.len() {
            let mut d = Decoder::default();
            let mut frames = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(
                frames,
                vec![b"MSH|1\rMSA|AA|1\r".to_vec(), b"MSH|2".to_vec()]
            );
            assert!(!d.in_frame());
        }
    }

    #[test]
    fn decoder_rejects_garbage_with_typed_errors() {
        let mut d = Decoder::default();
        d.push(b"\r\nX");
        assert_eq!(d.next_frame(), Err(MllpError::OutsideFrame(b'X')));
        let mut d = Decoder::default();
        d.push(b"\x0babc\x1cX");
        assert_eq!(d.next_frame(), Err(MllpError::BadTrailer(b'X')));
        let mut d = Decoder::default();
        d.push(b"\x0bab\x0b");
        assert_eq!(d.next_frame(), Err(MllpError::NestedStart));
        // after an error the decoder resynchronises on the next frame
        d.push(b"\x0bok\x1c\x0d");
        assert_eq!(d.next_frame(), Ok(Some(b"ok".to_vec())));
    }

    #[test]
    fn decoder_caps_frame_size() {
        let mut d = Decoder::new(4);
        d.push(b"\x0b1234\x1c\x0d");
        assert_eq!(d.next_frame(), Ok(Some(b"1234".to_vec())));
        d.push(b"\x0b12345");
        assert_eq!(d.next_frame(), Err(MllpError::TooLarge(4)));
    }
}
