//! HL7 acknowledgements: parsing the RIS's ACK (MSH + MSA [+ ERR]) into a typed [`Ack`], the
//! one mapping from acknowledgement codes to delivery outcomes, and the ACK a receiver
//! builds (used by the test peers).

use super::message::{escape, unescape_with, Delimiters};

/// Most characters kept of any text taken from an ACK (control id, MSA-3, ERR).
pub const MAX_TEXT_CHARS: usize = 256;

/// `s` cut to [`MAX_TEXT_CHARS`] characters (an ellipsis marks the cut), made
/// [`crate::logging::single_line`]: safe to log and to store.
fn bounded(s: &str) -> String {
    let cut: String = s.chars().take(MAX_TEXT_CHARS).collect();
    let mut out = crate::logging::single_line(&cut).into_owned();
    if s.chars().nth(MAX_TEXT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// `bytes` as text: UTF-8 when they are, else ISO 8859-1 (every byte is a character).
fn text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => bytes
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into(),
    }
}

/// MSA-1 acknowledgement code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Original mode: application accept.
    AA,
    /// Original mode: application error.
    AE,
    /// Original mode: application reject.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    /// Parses an MSA-1 value.
    pub fn parse(s: &str) -> Option<AckCode> {
        Some(match s.trim() {
            "AA" => AckCode::AA,
            "AE" => AckCode::AE,
            "AR" => AckCode::AR,
            "CA" => AckCode::CA,
            "CE" => AckCode::CE,
            "CR" => AckCode::CR,
            _ => return None,
        })
    }

    /// The code as it is written in MSA-1.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// Whether the peer took responsibility for the message (`AA`, `CA`).
    pub fn is_positive(self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

/// Why bytes received as an ACK are not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The MLLP frame that should carry the ACK is not one (too large, garbage between
    /// frames).
    #[error("bad MLLP answer: {0}")]
    BadFrame(String),
    /// The first segment is not an MSH with a field separator and encoding characters.
    #[error("acknowledgement does not start with an MSH segment")]
    NoMsh,
    /// The message has no MSA segment.
    #[error("acknowledgement has no MSA segment")]
    NoMsa,
    /// MSA-1 holds an unknown code.
    #[error("unknown acknowledgement code {0:?}")]
    UnknownCode(String),
    /// MSA-2 names another message.
    #[error("acknowledgement is for message {got:?}, expected {expected:?}")]
    WrongControlId {
        /// Our MSH-10.
        expected: String,
        /// The ACK's MSA-2.
        got: String,
    },
}

/// A parsed acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// MSA-1.
    pub code: AckCode,
    /// MSA-2: the control id (MSH-10) of the acknowledged message.
    pub control_id: String,
    /// MSA-3 text message, or ERR-8 user message when MSA-3 is empty (unescaped).
    pub text: String,
}

impl Ack {
    /// Parses an ACK message (the payload of one MLLP frame). Accepts CR, LF or CRLF as
    /// segment terminators and any field separator/encoding characters the MSH declares.
    ///
    /// The bytes are read as UTF-8 when they are UTF-8 and as ISO 8859-1 otherwise (a
    /// RIS answering in its own 8-bit character set, `MSH-18` `8859/1` as European sites
    /// do): the fields parsed are ASCII in either, and the RIS's words keep their accents.
    ///
    /// Any input gives an [`Ack`] or an [`AckError`], never a panic: the text is handled
    /// as whole characters, and what is kept of it (MSA-2, MSA-3, ERR) is cut to
    /// [`MAX_TEXT_CHARS`] characters with control characters replaced, so a RIS cannot
    /// put line breaks or megabytes into a log line or an outbox record. The size of the
    /// input itself is bounded by the MLLP frame cap of the channel.
    pub fn parse(bytes: &[u8]) -> Result<Ack, AckError> {
        let text = text_of(bytes);
        let mut segments = text
            .split(['\r', '\n'])
            .map(|s| s.trim_start_matches('\u{feff}'))
            .filter(|s| !s.trim().is_empty());
        let msh = segments.next().ok_or(AckError::NoMsh)?;
        let after_id = msh.strip_prefix("MSH").ok_or(AckError::NoMsh)?;
        let mut chars = after_id.chars();
        let sep = chars.next().ok_or(AckError::NoMsh)?;
        let encoding: String = chars.take_while(|c| *c != sep).take(4).collect();
        if sep.is_alphanumeric() || sep.is_whitespace() || encoding.is_empty() {
            return Err(AckError::NoMsh);
        }
        let delimiters = Delimiters::declared(sep, &encoding);
        let unescape = |s: &str| bounded(&unescape_with(s, &delimiters));
        let mut msa: Option<Vec<&str>> = None;
        let mut err_text = String::new();
        for seg in segments {
            let mut fields = seg.split(sep);
            match fields.next() {
                Some("MSA") if msa.is_none() => msa = Some(fields.take(3).collect()),
                Some("ERR") if err_text.is_empty() => {
                    let fields: Vec<&str> = fields.take(8).collect();
                    // ERR-8 user message, else ERR-3 (HL7 error code) text component
                    err_text = fields
                        .get(7)
                        .filter(|s| !s.is_empty())
                        .map(|s| unescape(s))
                        .or_else(|| {
                            fields
                                .get(2)
                                .and_then(|f| f.split(delimiters.component).nth(1))
                                .map(unescape)
                        })
                        .unwrap_or_default();
                }
                _ => {}
            }
        }
        // `msa` holds MSA-1.. (the segment id is consumed)
        let msa = msa.ok_or(AckError::NoMsa)?;
        let raw_code = msa.first().copied().unwrap_or("");
        let code =
            AckCode::parse(raw_code).ok_or_else(|| AckError::UnknownCode(bounded(raw_code)))?;
        let control_id = unescape(msa.get(1).copied().unwrap_or("").trim());
        let text = msa
            .get(2)
            .filter(|s| !s.is_empty())
            .map(|s| unescape(s))
            .unwrap_or(err_text);
        Ok(Ack {
            code,
            control_id,
            text,
        })
    }

    /// Checks that this ACK answers the message with control id `expected`.
    pub fn expect_control_id(self, expected: &str) -> Result<Ack, AckError> {
        if self.control_id == expected {
            Ok(self)
        } else {
            Err(AckError::WrongControlId {
                expected: expected.to_string(),
                got: self.control_id,
            })
        }
    }
}

/// Builds an original-mode ACK for the message with control id `control_id`: what a
/// receiver answers. `ack_id` is the ACK's own MSH-10.
pub fn build_ack(code: AckCode, control_id: &str, ack_id: &str, text: &str) -> String {
    let mut msg = format!(
        "MSH|^~\\&|RIS|HOSP|DULI|SITE||ACK^R01^ACK|{}|P|2.5.1\rMSA|{}|{}",
        escape(ack_id),
        code.as_str(),
        escape(control_id)
    );
    if !text.is_empty() {
        msg.push('|');
        msg.push_str(&escape(text));
    }
    msg.push('\r');
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_world_ack_fixture() {
        let bytes = b"MSH|^~\\&|RIS|HOSP|DULI|hospital-a|20240131093016||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|r-7f3a9c2e01\r";
        let ack = Ack::parse(bytes).unwrap();
        assert_eq!(ack.code, AckCode::AA);
        assert_eq!(ack.control_id, "r-7f3a9c2e01");
        assert!(ack.code.is_positive());
        assert!(ack.expect_control_id("r-7f3a9c2e01").is_ok());
    }

    #[test]
    fn takes_error_text_from_msa3_or_err() {
        let ack =
            Ack::parse(b"MSH|^~\\&|R|H\r\nMSA|AE|X1|Unknown patient \\T\\ visit\r\n").unwrap();
        assert_eq!(ack.code, AckCode::AE);
        assert_eq!(ack.text, "Unknown patient & visit");
        let ack = Ack::parse(
            b"MSH|^~\\&|R|H\rMSA|AR|X1\rERR||PID^1^3|204^Unknown key identifier^HL70357|E||||Patient not found\r",
        )
        .unwrap();
        assert_eq!(ack.code, AckCode::AR);
        assert_eq!(ack.text, "Patient not found");
        let ack =
            Ack::parse(b"MSH|^~\\&|R|H\rMSA|CR|X1\rERR||PID|207^Application internal error\r")
                .unwrap();
        assert_eq!(ack.text, "Application internal error");
        assert!(!ack.code.is_positive());
    }

    #[test]
    fn other_delimiters_declared_in_msh_are_honoured() {
        let ack = Ack::parse(b"MSH#$~\\&#R#H\rMSA#CA#X9\r").unwrap();
        assert_eq!(ack.code, AckCode::CA);
        assert_eq!(ack.control_id, "X9");
    }

    #[test]
    fn garbage_gets_typed_errors() {
        assert_eq!(Ack::parse(b"\xff\xfe"), Err(AckError::NoMsh));
        assert_eq!(Ack::parse(b""), Err(AckError::NoMsh));
        assert_eq!(Ack::parse(b"HELLO"), Err(AckError::NoMsh));
        assert_eq!(Ack::parse(b"MSH"), Err(AckError::NoMsh));
        assert_eq!(Ack::parse(b"MSH|^~\\&\rPID|1"), Err(AckError::NoMsa));
        assert_eq!(
            Ack::parse(b"MSH|^~\\&\rMSA|OK|1"),
            Err(AckError::UnknownCode("OK".into()))
        );
        assert_eq!(
            Ack::parse(b"MSH|^~\\&\rMSA|AA|other").and_then(|a| a.expect_control_id("mine")),
            Err(AckError::WrongControlId {
                expected: "mine".into(),
                got: "other".into()
            })
        );
    }

    /// A RIS answering in ISO 8859-1 (MSH-18 `8859/1`): its ACK is read, accents kept.
    #[test]
    fn an_ack_in_iso_8859_1_is_read_with_its_accents() {
        let ack = Ack::parse(
            b"MSH|^~\\&|RIS|H\xf4PITAL|DULI|S|20261207||ACK|A1|P|2.5.1|||||FRA|8859/1\rMSA|AE|r-1|Patient non trouv\xe9\r",
        )
        .unwrap();
        assert_eq!(ack.code, AckCode::AE);
        assert_eq!(ack.control_id, "r-1");
        assert_eq!(ack.text, "Patient non trouvé");
    }

    #[test]
    fn build_ack_round_trips() {
        let text = build_ack(AckCode::AE, "id|1", "A7", "bad ^ field");
        let ack = Ack::parse(text.as_bytes()).unwrap();
        assert_eq!(ack.code, AckCode::AE);
        assert_eq!(ack.control_id, "id|1");
        assert_eq!(ack.text, "bad ^ field");
    }

    /// The acknowledgement that stopped HL7 delivery: a two-byte character between hex
    /// digits of a `\X..\` escape in MSA-3.
    const MULTIBYTE_IN_HEX_ESCAPE: &[u8] =
        "MSH|^~\\&|RIS|HOSP|DULI|SITE|20261203||ACK^R01^ACK|A1|P|2.5.1\rMSA|AE|r-1|Paciente \\X0é0\\ não encontrado\r"
            .as_bytes();

    #[test]
    fn a_multibyte_character_inside_a_hex_escape_is_text_not_a_panic() {
        let ack = Ack::parse(MULTIBYTE_IN_HEX_ESCAPE).unwrap();
        assert_eq!(ack.code, AckCode::AE);
        assert_eq!(ack.control_id, "r-1");
        // not hex digits: the escape is kept as it came
        assert_eq!(ack.text, "Paciente \\X0é0\\ não encontrado");
        for seq in [
            "\\Xé\\",
            "\\X0é\\",
            "\\Xé0\\",
            "\\X山0\\",
            "\\X0😀0\\",
            "\\X",
            "\\",
        ] {
            let msg = format!("MSH|^~\\&\rMSA|AR|r-1|{seq}\r");
            let ack = Ack::parse(msg.as_bytes()).unwrap();
            assert_eq!(ack.code, AckCode::AR, "{seq}");
            assert_eq!(ack.text, seq.replace("\\\\", "\\"), "{seq}");
        }
    }

    #[test]
    fn text_taken_from_an_ack_is_bounded_and_free_of_control_characters() {
        let long = "é".repeat(5000);
        let msg = format!("MSH|^~\\&\rMSA|AE|r-1|line1\\X0A\\line2\\X1B\\[31m{long}\r");
        let ack = Ack::parse(msg.as_bytes()).unwrap();
        assert!(ack.text.starts_with("line1 line2 [31m"), "{}", ack.text);
        assert_eq!(ack.text.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(!ack.text.chars().any(char::is_control));
        let msg = format!("MSH|^~\\&\rMSA|{long}|r-1\r");
        match Ack::parse(msg.as_bytes()) {
            Err(AckError::UnknownCode(code)) => assert!(code.chars().count() <= MAX_TEXT_CHARS + 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_escape_character_declared_in_msh_is_the_one_unescaped() {
        let ack = Ack::parse(b"MSH|^~!&\rMSA|AE|r-1|a!T!b!X41!\\c\r").unwrap();
        assert_eq!(ack.text, "a&bA\\c");
        let ack = Ack::parse(b"MSH|^\rMSA|AE|r-1|a\\T\\b\r").unwrap();
        assert_eq!(
            ack.text, "a&b",
            "missing encoding characters keep the standard ones"
        );
    }

    /// xorshift64*: a fixed-seed generator, so a failure is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Pieces that matter to the parser: delimiters, escapes, hex digits, segment ends,
    /// multi-byte characters of every width, MLLP bytes.
    const PIECES: &[&str] = &[
        "\\", "X", "0", "A", "f", "|", "^", "~", "&", "\r", "\n", "é", "山", "😀", "\u{feff}",
        "MSH", "MSA", "ERR", "AA", "AE", "\\X", "\\F\\", "\\.br\\", "\\H\\", "\u{0b}", "\u{1c}",
        " ",
    ];

    #[test]
    fn no_mutation_of_an_ack_makes_the_parser_panic() {
        let seeds: [&[u8]; 4] = [
            MULTIBYTE_IN_HEX_ESCAPE,
            b"MSH|^~\\&|RIS|HOSP\rMSA|AA|r-7f3a9c2e01\r",
            b"MSH|^~\\&|R|H\rMSA|AR|X1\rERR||PID^1^3|204^Unknown key^HL70357|E||||Patient not found\r",
            b"MSH#$~!&#R#H\rMSA#CE#X9#!X4142!\r",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut parsed, mut refused) = (0, 0);
        for round in 0..30_000 {
            let mut bytes = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(4) {
                    // insert a piece
                    0 | 1 => {
                        let piece = PIECES[rng.below(PIECES.len())].as_bytes();
                        bytes.splice(at..at, piece.iter().copied());
                    }
                    // delete a run (may split a multi-byte character)
                    2 => {
                        let end = (at + 1 + rng.below(4)).min(bytes.len());
                        bytes.drain(at.min(end)..end);
                    }
                    // overwrite a byte with anything
                    _ => {
                        if let Some(b) = bytes.get_mut(at) {
                            *b = rng.next() as u8;
                        }
                    }
                }
            }
            match Ack::parse(&bytes) {
                Ok(ack) => {
                    parsed += 1;
                    assert!(ack.text.chars().count() <= MAX_TEXT_CHARS + 1);
                    assert!(ack.control_id.chars().count() <= MAX_TEXT_CHARS + 1);
                }
                Err(_) => refused += 1,
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let out = unescape_with(text, &Delimiters::default());
                assert!(out.len() <= 2 * text.len() + 4, "{text:?}");
            }
        }
        // the mutations exercise both outcomes, not only the first check
        assert!(
            parsed > 5_000 && refused > 1_000,
            "{parsed} parsed, {refused} refused"
        );
    }

    #[test]
    fn random_texts_round_trip_through_build_ack() {
        let mut rng = Rng(42);
        for _ in 0..5_000 {
            let text: String = (0..rng.below(24))
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect();
            let ack = Ack::parse(build_ack(AckCode::AE, "r-1", "A1", &text).as_bytes()).unwrap();
            assert_eq!(ack.text, bounded(&text), "{text:?}");
        }
    }
}
