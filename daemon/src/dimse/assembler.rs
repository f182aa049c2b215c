//! Reassembly of incoming P-DATA values into DIMSE messages (PS3.7 §6.3, PS3.8 Annex E).
//!
//! [`Assembler`] is a pure state machine: feed it each [`PDataValue`] in arrival order and it
//! yields an [`Event`] when something is complete. Command fragments are buffered (up to a
//! hard cap) until the last one arrives; data-set fragments are handed straight back to the
//! caller without buffering, so an instance of any size can be streamed to a file.

use dicom_ul::pdu::{PDataValue, PDataValueType};

use super::command::{self, Command};
use super::DimseError;

/// Default cap on the size of one command set (far above any real one).
pub const DEFAULT_COMMAND_LIMIT: usize = 64 * 1024;

/// Something the assembler completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole command set arrived and decoded. If `command.has_data_set`, the next
    /// fragments are its data set on the same presentation context.
    Command {
        /// Presentation context the command arrived on.
        pc_id: u8,
        /// The decoded command (boxed: data events, far more frequent, stay small).
        command: Box<Command>,
    },
    /// One fragment of a data set, passed through as received.
    Data {
        /// Presentation context of the data set.
        pc_id: u8,
        /// The fragment's bytes.
        bytes: Vec<u8>,
        /// True on the data set's last fragment.
        last: bool,
    },
}

/// Where the assembler is within the message stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: only a command fragment may come.
    Idle,
    /// Some fragments of a command set on this context have arrived, not the last.
    Command(u8),
    /// A command announced a data set on this context; its fragments are expected.
    Data(u8),
}

/// Reassembles P-DATA values into commands and data-set fragments for one association.
///
/// After an error the assembler is back in its idle state, but the association should be
/// aborted: the peer broke the protocol.
#[derive(Debug, Clone)]
pub struct Assembler {
    accepted: [bool; 256],
    state: State,
    command: Vec<u8>,
    command_limit: usize,
}

impl Assembler {
    /// An assembler that accepts fragments only on the given (accepted) presentation context
    /// ids, with the default command size cap.
    pub fn new(accepted_pc_ids: impl IntoIterator<Item = u8>) -> Self {
        let mut accepted = [false; 256];
        for id in accepted_pc_ids {
            accepted[usize::from(id)] = true;
        }
        Assembler {
            accepted,
            state: State::Idle,
            command: Vec::new(),
            command_limit: DEFAULT_COMMAND_LIMIT,
        }
    }

    /// This assembler with another cap on the size of one command set, in bytes.
    pub fn with_command_limit(mut self, limit: usize) -> Self {
        self.command_limit = limit;
        self
    }

    /// True between messages (no command or data set partly received). A release request
    /// that arrives when this is false cuts a message short.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Presentation context whose data set is expected next, if any.
    pub fn expecting_data(&self) -> Option<u8> {
        match self.state {
            State::Data(pc_id) => Some(pc_id),
            _ => None,
        }
    }

    /// Feeds one P-DATA value. Returns the event it completes, or `None` when it was a
    /// non-final command fragment.
    pub fn feed(&mut self, pdv: PDataValue) -> Result<Option<Event>, DimseError> {
        let result = self.step(pdv);
        if result.is_err() {
            self.state = State::Idle;
            self.command = Vec::new();
        }
        result
    }

    fn step(&mut self, pdv: PDataValue) -> Result<Option<Event>, DimseError> {
        let pc_id = pdv.presentation_context_id;
        if !self.accepted[usize::from(pc_id)] {
            return Err(DimseError::UnknownPresentationContext(pc_id));
        }
        match (pdv.value_type, self.state) {
            (PDataValueType::Command, State::Data(_)) => Err(DimseError::UnexpectedCommand(pc_id)),
            (PDataValueType::Data, State::Idle | State::Command(_)) => {
                Err(DimseError::UnexpectedData(pc_id))
            }
            (PDataValueType::Command, State::Command(expected))
            | (PDataValueType::Data, State::Data(expected))
                if expected != pc_id =>
            {
                Err(DimseError::PresentationContextMismatch {
                    expected,
                    got: pc_id,
                })
            }
            (PDataValueType::Data, State::Data(_)) => {
                if pdv.is_last {
                    self.state = State::Idle;
                }
                Ok(Some(Event::Data {
                    pc_id,
                    bytes: pdv.data,
                    last: pdv.is_last,
                }))
            }
            (PDataValueType::Command, State::Idle | State::Command(_)) => {
                if self.command.len().saturating_add(pdv.data.len()) > self.command_limit {
                    return Err(DimseError::CommandTooLarge {
                        limit: self.command_limit,
                    });
                }
                self.command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    self.state = State::Command(pc_id);
                    return Ok(None);
                }
                let bytes = std::mem::take(&mut self.command);
                let command = command::decode(&bytes)?;
                self.state = if command.has_data_set {
                    State::Data(pc_id)
                } else {
                    State::Idle
                };
                Ok(Some(Event::Command {
                    pc_id,
                    command: Box::new(command),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::command::{encode, Priority};
    use crate::dimse::fragment::fragments;
    use rand::{Rng, SeedableRng};

    fn pdv(pc: u8, ty: PDataValueType, last: bool, data: &[u8]) -> PDataValue {
        PDataValue {
            presentation_context_id: pc,
            value_type: ty,
            is_last: last,
            data: data.to_vec(),
        }
    }

    fn store_rq() -> Command {
        Command::store_rq(1, "1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", Priority::Medium)
    }

    #[test]
    fn command_in_fragments_then_streamed_data() {
        let mut asm = Assembler::new([1, 3]);
        let bytes = encode(&store_rq());
        let (a, b) = bytes.split_at(10);
        assert_eq!(
            asm.feed(pdv(3, PDataValueType::Command, false, a)),
            Ok(None)
        );
        assert!(!asm.is_idle());
        let ev = asm.feed(pdv(3, PDataValueType::Command, true, b)).unwrap();
        assert_eq!(
            ev,
            Some(Event::Command {
                pc_id: 3,
                command: Box::new(store_rq())
            })
        );
        assert_eq!(asm.expecting_data(), Some(3));
        for (i, chunk) in [&b"abc"[..], b"", b"def"].iter().enumerate() {
            let last = i == 2;
            let ev = asm.feed(pdv(3, PDataValueType::Data, last, chunk)).unwrap();
            assert_eq!(
                ev,
                Some(Event::Data {
                    pc_id: 3,
                    bytes: chunk.to_vec(),
                    last
                })
            );
        }
        assert!(asm.is_idle());
        // The next message may use another context.
        let echo = Command::echo_rq(2);
        let ev = asm.feed(pdv(1, PDataValueType::Command, true, &encode(&echo)));
        assert_eq!(
            ev,
            Ok(Some(Event::Command {
                pc_id: 1,
                command: Box::new(echo)
            }))
        );
        assert!(asm.is_idle());
    }

    #[test]
    fn large_data_set_is_never_buffered() {
        // 30 MB in 16 KiB fragments: each comes back as its own event, nothing accumulates.
        let mut asm = Assembler::new([1]);
        asm.feed(pdv(1, PDataValueType::Command, true, &encode(&store_rq())))
            .unwrap();
        let fragment = vec![0x5Au8; 16 * 1024];
        let total = 30 * 1024 * 1024 / fragment.len();
        let mut seen = 0usize;
        for i in 0..total {
            let last = i + 1 == total;
            match asm.feed(pdv(1, PDataValueType::Data, last, &fragment)) {
                Ok(Some(Event::Data { bytes, .. })) => seen += bytes.len(),
                other => panic!("unexpected {other:?}"),
            }
            assert!(asm.command.capacity() <= DEFAULT_COMMAND_LIMIT);
        }
        assert_eq!(seen, 30 * 1024 * 1024);
        assert!(asm.is_idle());
    }

    #[test]
    fn protocol_violations_are_typed_errors() {
        let cmd = encode(&store_rq());
        let echo = encode(&Command::echo_rq(1));

        let mut asm = Assembler::new([1, 3]);
        assert_eq!(
            asm.feed(pdv(5, PDataValueType::Command, true, &echo)),
            Err(DimseError::UnknownPresentationContext(5))
        );
        assert_eq!(
            asm.feed(pdv(1, PDataValueType::Data, true, b"x")),
            Err(DimseError::UnexpectedData(1))
        );
        // Data after a command without data set.
        asm.feed(pdv(1, PDataValueType::Command, true, &echo))
            .unwrap();
        assert_eq!(
            asm.feed(pdv(1, PDataValueType::Data, true, b"x")),
            Err(DimseError::UnexpectedData(1))
        );
        // Data while the command set is incomplete.
        asm.feed(pdv(1, PDataValueType::Command, false, &cmd[..4]))
            .unwrap();
        assert_eq!(
            asm.feed(pdv(1, PDataValueType::Data, true, b"x")),
            Err(DimseError::UnexpectedData(1))
        );
        assert!(asm.is_idle());
        // Command continued on another context.
        asm.feed(pdv(1, PDataValueType::Command, false, &cmd[..4]))
            .unwrap();
        assert_eq!(
            asm.feed(pdv(3, PDataValueType::Command, true, &cmd[4..])),
            Err(DimseError::PresentationContextMismatch {
                expected: 1,
                got: 3
            })
        );
        // Data on another context than its command.
        asm.feed(pdv(1, PDataValueType::Command, true, &cmd))
            .unwrap();
        assert_eq!(
            asm.feed(pdv(3, PDataValueType::Data, true, b"x")),
            Err(DimseError::PresentationContextMismatch {
                expected: 1,
                got: 3
            })
        );
        // A command while a data set is expected.
        asm.feed(pdv(1, PDataValueType::Command, true, &cmd))
            .unwrap();
        assert_eq!(
            asm.feed(pdv(1, PDataValueType::Command, true, &echo)),
            Err(DimseError::UnexpectedCommand(1))
        );
        // A command set that decodes badly.
        assert!(matches!(
            asm.feed(pdv(1, PDataValueType::Command, true, &cmd[..cmd.len() - 3])),
            Err(DimseError::Truncated { .. })
        ));
        assert!(asm.is_idle());
    }

    #[test]
    fn command_size_is_capped() {
        let mut asm = Assembler::new([1]).with_command_limit(100);
        let chunk = [0u8; 60];
        assert_eq!(
            asm.feed(pdv(1, PDataValueType::Command, false, &chunk)),
            Ok(None)
        );
        assert_eq!(
            asm.feed(pdv(1, PDataValueType::Command, false, &chunk)),
            Err(DimseError::CommandTooLarge { limit: 100 })
        );
        let mut asm = Assembler::new([1]);
        let big = vec![0u8; 40 * 1024];
        asm.feed(pdv(1, PDataValueType::Command, false, &big))
            .unwrap();
        assert_eq!(
            asm.feed(pdv(1, PDataValueType::Command, false, &big)),
            Err(DimseError::CommandTooLarge {
                limit: DEFAULT_COMMAND_LIMIT
            })
        );
    }

    #[test]
    fn reassembles_what_fragments_split() {
        let rq = Command::move_rq(4, "1.2.840.10008.5.1.4.1.2.2.2", Priority::Low, "PACS");
        let identifier = vec![7u8; 1000];
        let mut asm = Assembler::new([9]);
        let mut got_command = None;
        let mut data = Vec::new();
        // A maximum PDU length of 30 forces 24-byte fragments.
        let pdvs = fragments(9, PDataValueType::Command, &encode(&rq), 30)
            .into_iter()
            .chain(fragments(9, PDataValueType::Data, &identifier, 30));
        for p in pdvs {
            assert!(p.data.len() <= 24);
            match asm.feed(p).unwrap() {
                Some(Event::Command { command, .. }) => got_command = Some(*command),
                Some(Event::Data { bytes, .. }) => data.extend(bytes),
                None => {}
            }
        }
        assert_eq!(got_command, Some(rq));
        assert_eq!(data, identifier);
        assert!(asm.is_idle());
    }

    #[test]
    fn random_fragments_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xA55E);
        let valid = encode(&store_rq());
        let mut asm = Assembler::new([1, 3, 5]).with_command_limit(4096);
        for _ in 0..10_000 {
            let pc = [1u8, 3, 5, 7][rng.gen_range(0..4)];
            let ty = if rng.gen_bool(0.5) {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            };
            let data: Vec<u8> = if rng.gen_bool(0.3) {
                valid[..rng.gen_range(0..=valid.len())].to_vec()
            } else {
                let len = rng.gen_range(0..300);
                (0..len).map(|_| rng.gen()).collect()
            };
            let p = PDataValue {
                presentation_context_id: pc,
                value_type: ty,
                is_last: rng.gen_bool(0.5),
                data,
            };
            let _ = asm.feed(p);
            assert!(asm.command.len() <= 4096);
        }
    }
}
