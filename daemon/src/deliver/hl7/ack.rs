//! HL7 acknowledgements: parsing the RIS's ACK (MSH + MSA [+ ERR]) into a typed [`Ack`], the
//! one mapping from acknowledgement codes to delivery outcomes, and the ACK a receiver
//! builds (used by the test peers).

use super::message::{escape, unescape};

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
    /// Not UTF-8 text.
    #[error("acknowledgement is not UTF-8")]
    NotText,
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
    pub fn parse(bytes: &[u8]) -> Result<Ack, AckError> {
        let text = std::str::from_utf8(bytes).map_err(|_| AckError::NotText)?;
        let mut segments = text
            .split(['\r', '\n'])
            .map(|s| s.trim_start_matches('\u{feff}'))
            .filter(|s| !s.trim().is_empty());
        let msh = segments.next().ok_or(AckError::NoMsh)?;
        let mut chars = msh.chars();
        if chars.by_ref().take(3).collect::<String>() != "MSH" {
            return Err(AckError::NoMsh);
        }
        let sep = chars.next().ok_or(AckError::NoMsh)?;
        let enc: Vec<char> = chars.take_while(|c| *c != sep).collect();
        if sep.is_alphanumeric() || enc.is_empty() {
            return Err(AckError::NoMsh);
        }
        let component = enc[0];
        let mut msa = None;
        let mut err_text = String::new();
        for seg in segments {
            let fields: Vec<&str> = seg.split(sep).collect();
            match fields[0] {
                "MSA" if msa.is_none() => msa = Some(fields),
                "ERR" if err_text.is_empty() => {
                    // ERR-8 user message, else ERR-3 (HL7 error code) text component
                    err_text = fields
                        .get(8)
                        .filter(|s| !s.is_empty())
                        .map(|s| unescape(s))
                        .or_else(|| {
                            fields
                                .get(3)
                                .and_then(|f| f.split(component).nth(1))
                                .map(unescape)
                        })
                        .unwrap_or_default();
                }
                _ => {}
            }
        }
        let msa = msa.ok_or(AckError::NoMsa)?;
        let raw_code = msa.get(1).copied().unwrap_or("");
        let code =
            AckCode::parse(raw_code).ok_or_else(|| AckError::UnknownCode(raw_code.to_string()))?;
        let control_id = unescape(msa.get(2).copied().unwrap_or("").trim());
        let text = msa
            .get(3)
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
        assert_eq!(Ack::parse(b"\xff\xfe"), Err(AckError::NotText));
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

    #[test]
    fn build_ack_round_trips() {
        let text = build_ack(AckCode::AE, "id|1", "A7", "bad ^ field");
        let ack = Ack::parse(text.as_bytes()).unwrap();
        assert_eq!(ack.code, AckCode::AE);
        assert_eq!(ack.control_id, "id|1");
        assert_eq!(ack.text, "bad ^ field");
    }
}
