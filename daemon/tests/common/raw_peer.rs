//! A DICOM peer on a raw socket that sends whatever a test tells it to: any presentation
//! contexts and SCP/SCU role selection items, any command on any context, with or without
//! the roles it was granted. Real peers (DCMTK, pynetdicom) refuse to send what the
//! association did not agree on; a hostile one does not. Included by path by the suites
//! that use it (`tests/hostile_dimse.rs`).

#![allow(dead_code)]

use dicom_ul::pdu::{
    AssociationAC, AssociationRQ, PDataValue, PDataValueType, Pdu, PresentationContextProposed,
    PresentationContextResultReason, RequestorRoles, UserVariableItem,
};
use duli::dimse::{decode, encode, fragments, Command};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Explicit VR Little Endian.
#[allow(unused_imports)]
pub use duli::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN as EXPLICIT_LE;
const MAX_PDU: u32 = 65_536;

/// One proposed presentation context.
pub struct Proposal<'a> {
    /// Odd presentation context id.
    pub id: u8,
    /// Abstract syntax (SOP class UID).
    pub abstract_syntax: &'a str,
    /// Transfer syntaxes offered.
    pub transfer_syntaxes: &'a [&'a str],
}

/// How an association request ended.
pub enum Outcome {
    /// A-ASSOCIATE-AC: the association is open.
    Accepted(RawPeer),
    /// Any other answer (A-ASSOCIATE-RJ, A-ABORT, ...).
    Refused(Pdu),
}

/// An open association driven by hand.
pub struct RawPeer {
    stream: TcpStream,
    /// The A-ASSOCIATE-AC received.
    pub ac: AssociationAC,
}

fn read_pdu(stream: &mut TcpStream) -> io::Result<Pdu> {
    let mut header = [0u8; 6];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if len > 16 * 1024 * 1024 {
        return Err(io::Error::other(format!("PDU of {len} bytes")));
    }
    let mut bytes = header.to_vec();
    bytes.resize(6 + len, 0);
    stream.read_exact(&mut bytes[6..])?;
    dicom_ul::pdu::read_pdu(&bytes[..], 16 * 1024 * 1024, false)
        .map_err(|e| io::Error::other(e.to_string()))?
        .ok_or_else(|| io::Error::other("incomplete PDU"))
}

fn write_pdu(stream: &mut TcpStream, pdu: &Pdu) -> io::Result<()> {
    let mut bytes = Vec::new();
    dicom_ul::pdu::write_pdu(&mut bytes, pdu).map_err(|e| io::Error::other(e.to_string()))?;
    stream.write_all(&bytes)
}

/// The bytes of an A-ASSOCIATE-RQ from `calling` to `called` proposing `contexts` (with
/// SCP/SCU role selection for `roles`: SOP class, SCU, SCP) and a 64 KiB Maximum Length.
pub fn rq_bytes(
    calling: &str,
    called: &str,
    contexts: &[Proposal],
    roles: &[(&str, bool, bool)],
) -> Vec<u8> {
    let mut user_variables = vec![UserVariableItem::MaxLength(MAX_PDU)];
    for (uid, scu, scp) in roles {
        user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
            uid.to_string(),
            RequestorRoles {
                scu: *scu,
                scp: *scp,
            },
        ));
    }
    let rq = AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: called.into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: contexts
            .iter()
            .map(|c| PresentationContextProposed {
                id: c.id,
                abstract_syntax: c.abstract_syntax.into(),
                transfer_syntaxes: c.transfer_syntaxes.iter().map(|t| t.to_string()).collect(),
            })
            .collect(),
        user_variables,
    };
    let mut bytes = Vec::new();
    dicom_ul::pdu::write_pdu(&mut bytes, &Pdu::AssociationRQ(rq)).expect("encode A-ASSOCIATE-RQ");
    bytes
}

impl RawPeer {
    /// Requests an association from `calling` to `called` at `addr`, proposing
    /// `contexts` and, for each `(uid, scu, scp)` in `roles`, an SCP/SCU role selection item.
    pub fn associate(
        addr: SocketAddr,
        calling: &str,
        called: &str,
        contexts: &[Proposal],
        roles: &[(&str, bool, bool)],
    ) -> io::Result<Outcome> {
        Self::associate_on(TcpStream::connect(addr)?, calling, called, contexts, roles)
    }

    /// [`RawPeer::associate`] from source address `src` (an IPv4 loopback address such as
    /// 127.0.0.2, to stand for another device).
    pub fn associate_from(
        src: std::net::Ipv4Addr,
        addr: SocketAddr,
        calling: &str,
        called: &str,
        contexts: &[Proposal],
        roles: &[(&str, bool, bool)],
    ) -> io::Result<Outcome> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(std::net::IpAddr::V4(src), 0))?;
            socket.connect(addr).await
        })?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Self::associate_on(stream, calling, called, contexts, roles)
    }

    fn associate_on(
        mut stream: TcpStream,
        calling: &str,
        called: &str,
        contexts: &[Proposal],
        roles: &[(&str, bool, bool)],
    ) -> io::Result<Outcome> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        stream.write_all(&rq_bytes(calling, called, contexts, roles))?;
        Ok(match read_pdu(&mut stream)? {
            Pdu::AssociationAC(ac) => Outcome::Accepted(RawPeer { stream, ac }),
            other => Outcome::Refused(other),
        })
    }

    /// The transfer syntax of context `pc_id` if it was accepted.
    pub fn accepted(&self, pc_id: u8) -> Option<&str> {
        self.ac
            .presentation_contexts
            .iter()
            .find(|c| c.id == pc_id && c.reason == PresentationContextResultReason::Acceptance)
            .map(|c| c.transfer_syntax.trim_end_matches('\0'))
    }

    /// The roles the acceptor answered for `uid`, if it answered any.
    pub fn roles(&self, uid: &str) -> Option<RequestorRoles> {
        self.ac.user_variables.iter().find_map(|v| match v {
            UserVariableItem::ScuScpRoleSelectionSubItem(u, r)
                if u.trim_end_matches('\0') == uid =>
            {
                Some(*r)
            }
            _ => None,
        })
    }

    /// Sends a command and, when given, its data set on context `pc_id`.
    pub fn send(&mut self, pc_id: u8, command: &Command, data: Option<&[u8]>) -> io::Result<()> {
        let bytes = encode(command);
        let mut pdvs = fragments(pc_id, PDataValueType::Command, &bytes, MAX_PDU);
        if let Some(d) = data {
            pdvs.extend(fragments(pc_id, PDataValueType::Data, d, MAX_PDU));
        }
        for pdv in pdvs {
            write_pdu(&mut self.stream, &Pdu::PData { data: vec![pdv] })?;
        }
        Ok(())
    }

    /// Sends `data` as data set fragments on context `pc_id` with no command before them
    /// (a protocol violation).
    pub fn data_only(&mut self, pc_id: u8, data: &[u8]) -> io::Result<()> {
        for pdv in fragments(pc_id, PDataValueType::Data, data, MAX_PDU) {
            write_pdu(&mut self.stream, &Pdu::PData { data: vec![pdv] })?;
        }
        Ok(())
    }

    /// Sends a command fragment that carries no bytes and is not the last: a PDU that
    /// makes no progress.
    pub fn empty_command_fragment(&mut self, pc_id: u8) -> io::Result<()> {
        let pdv = PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: false,
            data: Vec::new(),
        };
        write_pdu(&mut self.stream, &Pdu::PData { data: vec![pdv] })
    }

    /// Reads until a whole command arrives and returns it (data set fragments in between
    /// are skipped); an error when the association ends first.
    pub fn command(&mut self) -> io::Result<Command> {
        let mut bytes = Vec::new();
        loop {
            match read_pdu(&mut self.stream)? {
                Pdu::PData { data } => {
                    for pdv in data {
                        if pdv.value_type != PDataValueType::Command {
                            continue;
                        }
                        bytes.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return decode(&bytes).map_err(|e| io::Error::other(e.to_string()));
                        }
                    }
                }
                other => return Err(io::Error::other(format!("got {other:?}"))),
            }
        }
    }

    /// Sends a request and returns the response that follows it.
    pub fn request(
        &mut self,
        pc_id: u8,
        command: &Command,
        data: Option<&[u8]>,
    ) -> io::Result<Command> {
        self.send(pc_id, command, data)?;
        self.command()
    }

    /// Releases the association (A-RELEASE-RQ, waits for the A-RELEASE-RP).
    pub fn release(mut self) -> io::Result<()> {
        write_pdu(&mut self.stream, &Pdu::ReleaseRQ)?;
        loop {
            match read_pdu(&mut self.stream)? {
                Pdu::ReleaseRP => return Ok(()),
                Pdu::PData { .. } => continue,
                other => return Err(io::Error::other(format!("got {other:?} for release"))),
            }
        }
    }
}
