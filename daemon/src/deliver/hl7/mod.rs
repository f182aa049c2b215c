//! HL7 v2.5.1 to the RIS: the ORU^R01 codec ([`message`]), MLLP framing ([`mllp`]), ACK
//! parsing ([`ack`]) and the channel that sends over TCP or TLS ([`client`]).
//!
//! The codec modules know nothing of sockets or the store; the client knows nothing of
//! segments beyond "send these bytes, read one ACK".

pub mod ack;
pub mod client;
pub mod message;
pub mod mllp;
