//! DIMSE command sets (group 0000) of the composite services: C-ECHO, C-STORE, C-FIND, C-MOVE,
//! C-GET and C-CANCEL, and of the two normalized services Storage Commitment uses:
//! N-ACTION and N-EVENT-REPORT.
//!
//! A command set is always Implicit VR Little Endian (PS3.7 §6.3.1). [`encode`] writes the
//! elements in ascending tag order behind a correct Command Group Length (0000,0000), pads
//! UIDs with NUL and other strings with spaces to even length. [`decode`] skips elements it
//! does not know, and reports truncated or malformed input as a [`DimseError`]: it never
//! reads or allocates beyond the input it was given.

use std::fmt;

use dicom_core::Tag;

use super::status::{Status, StatusClass};
use super::uids;
use super::DimseError;

/// Element numbers (group 0000) of the command elements this codec knows.
mod elem {
    pub const GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const REQUESTED_SOP_CLASS_UID: u16 = 0x0003;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const MOVE_DESTINATION: u16 = 0x0600;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const OFFENDING_ELEMENT: u16 = 0x0901;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const ERROR_ID: u16 = 0x0903;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const REQUESTED_SOP_INSTANCE_UID: u16 = 0x1001;
    pub const EVENT_TYPE_ID: u16 = 0x1002;
    pub const ACTION_TYPE_ID: u16 = 0x1008;
    pub const REMAINING: u16 = 0x1020;
    pub const COMPLETED: u16 = 0x1021;
    pub const FAILED: u16 = 0x1022;
    pub const WARNING: u16 = 0x1023;
    pub const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
    pub const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;
}

/// Value of Command Data Set Type (0000,0800) meaning "no data set follows".
const NO_DATA_SET: u16 = 0x0101;
/// Value written when a data set follows (any other value would do; DCMTK writes this one).
const DATA_SET_PRESENT: u16 = 0x0001;
/// Maximum length of an LO value such as Error Comment, in characters.
const LO_MAX_CHARS: usize = 64;

/// Command Field (0000,0100): which DIMSE message a command set is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandField {
    /// C-STORE-RQ (0001).
    CStoreRq,
    /// C-STORE-RSP (8001).
    CStoreRsp,
    /// C-GET-RQ (0010).
    CGetRq,
    /// C-GET-RSP (8010).
    CGetRsp,
    /// C-FIND-RQ (0020).
    CFindRq,
    /// C-FIND-RSP (8020).
    CFindRsp,
    /// C-MOVE-RQ (0021).
    CMoveRq,
    /// C-MOVE-RSP (8021).
    CMoveRsp,
    /// C-ECHO-RQ (0030).
    CEchoRq,
    /// C-ECHO-RSP (8030).
    CEchoRsp,
    /// C-CANCEL-RQ (0FFF).
    CCancelRq,
    /// N-EVENT-REPORT-RQ (0100).
    NEventReportRq,
    /// N-EVENT-REPORT-RSP (8100).
    NEventReportRsp,
    /// N-ACTION-RQ (0130).
    NActionRq,
    /// N-ACTION-RSP (8130).
    NActionRsp,
    /// Any other command field (other N-services or garbage); kept so that the peer can be
    /// answered with "unrecognized operation".
    Other(u16),
}

impl CommandField {
    /// The numeric value of this command field.
    pub fn code(self) -> u16 {
        match self {
            CommandField::CStoreRq => 0x0001,
            CommandField::CStoreRsp => 0x8001,
            CommandField::CGetRq => 0x0010,
            CommandField::CGetRsp => 0x8010,
            CommandField::CFindRq => 0x0020,
            CommandField::CFindRsp => 0x8020,
            CommandField::CMoveRq => 0x0021,
            CommandField::CMoveRsp => 0x8021,
            CommandField::CEchoRq => 0x0030,
            CommandField::CEchoRsp => 0x8030,
            CommandField::CCancelRq => 0x0FFF,
            CommandField::NEventReportRq => 0x0100,
            CommandField::NEventReportRsp => 0x8100,
            CommandField::NActionRq => 0x0130,
            CommandField::NActionRsp => 0x8130,
            CommandField::Other(code) => code,
        }
    }

    /// The command field with this numeric value.
    pub fn from_code(code: u16) -> Self {
        match code {
            0x0001 => CommandField::CStoreRq,
            0x8001 => CommandField::CStoreRsp,
            0x0010 => CommandField::CGetRq,
            0x8010 => CommandField::CGetRsp,
            0x0020 => CommandField::CFindRq,
            0x8020 => CommandField::CFindRsp,
            0x0021 => CommandField::CMoveRq,
            0x8021 => CommandField::CMoveRsp,
            0x0030 => CommandField::CEchoRq,
            0x8030 => CommandField::CEchoRsp,
            0x0FFF => CommandField::CCancelRq,
            0x0100 => CommandField::NEventReportRq,
            0x8100 => CommandField::NEventReportRsp,
            0x0130 => CommandField::NActionRq,
            0x8130 => CommandField::NActionRsp,
            other => CommandField::Other(other),
        }
    }

    /// True for responses (bit 15 set), false for requests including C-CANCEL-RQ.
    pub fn is_response(self) -> bool {
        self.code() & 0x8000 != 0
    }
}

impl fmt::Display for CommandField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            CommandField::CStoreRq => "C-STORE-RQ",
            CommandField::CStoreRsp => "C-STORE-RSP",
            CommandField::CGetRq => "C-GET-RQ",
            CommandField::CGetRsp => "C-GET-RSP",
            CommandField::CFindRq => "C-FIND-RQ",
            CommandField::CFindRsp => "C-FIND-RSP",
            CommandField::CMoveRq => "C-MOVE-RQ",
            CommandField::CMoveRsp => "C-MOVE-RSP",
            CommandField::CEchoRq => "C-ECHO-RQ",
            CommandField::CEchoRsp => "C-ECHO-RSP",
            CommandField::CCancelRq => "C-CANCEL-RQ",
            CommandField::NEventReportRq => "N-EVENT-REPORT-RQ",
            CommandField::NEventReportRsp => "N-EVENT-REPORT-RSP",
            CommandField::NActionRq => "N-ACTION-RQ",
            CommandField::NActionRsp => "N-ACTION-RSP",
            CommandField::Other(code) => return write!(f, "command {code:04X}H"),
        };
        f.write_str(name)
    }
}

/// Priority (0000,0700) of a C-STORE, C-FIND, C-MOVE or C-GET request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// MEDIUM (0000).
    #[default]
    Medium,
    /// HIGH (0001).
    High,
    /// LOW (0002).
    Low,
}

impl Priority {
    /// The numeric value of this priority.
    pub fn code(self) -> u16 {
        match self {
            Priority::Medium => 0x0000,
            Priority::High => 0x0001,
            Priority::Low => 0x0002,
        }
    }

    /// The priority with this value; values outside the standard's three are read as MEDIUM,
    /// since priority is only a hint and not worth refusing a request over.
    pub fn from_code(code: u16) -> Self {
        match code {
            0x0001 => Priority::High,
            0x0002 => Priority::Low,
            _ => Priority::Medium,
        }
    }
}

/// Sub-operation counts of a C-MOVE or C-GET response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOperations {
    /// Number of Remaining Sub-operations (0000,1020).
    pub remaining: u16,
    /// Number of Completed Sub-operations (0000,1021).
    pub completed: u16,
    /// Number of Failed Sub-operations (0000,1022).
    pub failed: u16,
    /// Number of Warning Sub-operations (0000,1023).
    pub warning: u16,
}

/// A decoded DIMSE command set. Absent elements are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Command Field (0000,0100).
    pub command_field: CommandField,
    /// Affected SOP Class UID (0000,0002).
    pub affected_sop_class_uid: Option<String>,
    /// Requested SOP Class UID (0000,0003).
    pub requested_sop_class_uid: Option<String>,
    /// Message ID (0000,0110).
    pub message_id: Option<u16>,
    /// Message ID Being Responded To (0000,0120).
    pub message_id_being_responded_to: Option<u16>,
    /// Move Destination (0000,0600), an AE title.
    pub move_destination: Option<String>,
    /// Priority (0000,0700).
    pub priority: Option<Priority>,
    /// Whether a data set follows the command: Command Data Set Type (0000,0800) other than
    /// 0101H.
    pub has_data_set: bool,
    /// Status (0000,0900).
    pub status: Option<Status>,
    /// Offending Element (0000,0901).
    pub offending_elements: Vec<Tag>,
    /// Error Comment (0000,0902).
    pub error_comment: Option<String>,
    /// Error ID (0000,0903).
    pub error_id: Option<u16>,
    /// Affected SOP Instance UID (0000,1000).
    pub affected_sop_instance_uid: Option<String>,
    /// Requested SOP Instance UID (0000,1001).
    pub requested_sop_instance_uid: Option<String>,
    /// Event Type ID (0000,1002) of an N-EVENT-REPORT.
    pub event_type_id: Option<u16>,
    /// Action Type ID (0000,1008) of an N-ACTION.
    pub action_type_id: Option<u16>,
    /// Number of Remaining Sub-operations (0000,1020).
    pub remaining_sub_operations: Option<u16>,
    /// Number of Completed Sub-operations (0000,1021).
    pub completed_sub_operations: Option<u16>,
    /// Number of Failed Sub-operations (0000,1022).
    pub failed_sub_operations: Option<u16>,
    /// Number of Warning Sub-operations (0000,1023).
    pub warning_sub_operations: Option<u16>,
    /// Move Originator Application Entity Title (0000,1030).
    pub move_originator_ae_title: Option<String>,
    /// Move Originator Message ID (0000,1031).
    pub move_originator_message_id: Option<u16>,
}

impl Command {
    /// A command of this kind with no elements set and no data set.
    pub fn new(command_field: CommandField) -> Self {
        Command {
            command_field,
            affected_sop_class_uid: None,
            requested_sop_class_uid: None,
            message_id: None,
            message_id_being_responded_to: None,
            move_destination: None,
            priority: None,
            has_data_set: false,
            status: None,
            offending_elements: Vec::new(),
            error_comment: None,
            error_id: None,
            affected_sop_instance_uid: None,
            requested_sop_instance_uid: None,
            event_type_id: None,
            action_type_id: None,
            remaining_sub_operations: None,
            completed_sub_operations: None,
            failed_sub_operations: None,
            warning_sub_operations: None,
            move_originator_ae_title: None,
            move_originator_message_id: None,
        }
    }

    /// C-ECHO-RQ for the Verification SOP class.
    pub fn echo_rq(message_id: u16) -> Self {
        Command {
            affected_sop_class_uid: Some(uids::VERIFICATION.to_owned()),
            message_id: Some(message_id),
            ..Command::new(CommandField::CEchoRq)
        }
    }

    /// C-STORE-RQ for one instance; a data set (the instance) follows.
    pub fn store_rq(
        message_id: u16,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        priority: Priority,
    ) -> Self {
        Command {
            affected_sop_class_uid: Some(sop_class_uid.to_owned()),
            affected_sop_instance_uid: Some(sop_instance_uid.to_owned()),
            message_id: Some(message_id),
            priority: Some(priority),
            has_data_set: true,
            ..Command::new(CommandField::CStoreRq)
        }
    }

    /// C-FIND-RQ in a query/retrieve information model; the identifier follows as data set.
    pub fn find_rq(message_id: u16, sop_class_uid: &str, priority: Priority) -> Self {
        Command {
            affected_sop_class_uid: Some(sop_class_uid.to_owned()),
            message_id: Some(message_id),
            priority: Some(priority),
            has_data_set: true,
            ..Command::new(CommandField::CFindRq)
        }
    }

    /// C-MOVE-RQ to `destination` (an AE title); the identifier follows as data set.
    pub fn move_rq(
        message_id: u16,
        sop_class_uid: &str,
        priority: Priority,
        destination: &str,
    ) -> Self {
        Command {
            affected_sop_class_uid: Some(sop_class_uid.to_owned()),
            message_id: Some(message_id),
            priority: Some(priority),
            move_destination: Some(destination.to_owned()),
            has_data_set: true,
            ..Command::new(CommandField::CMoveRq)
        }
    }

    /// C-GET-RQ; the identifier follows as data set.
    pub fn get_rq(message_id: u16, sop_class_uid: &str, priority: Priority) -> Self {
        Command {
            affected_sop_class_uid: Some(sop_class_uid.to_owned()),
            message_id: Some(message_id),
            priority: Some(priority),
            has_data_set: true,
            ..Command::new(CommandField::CGetRq)
        }
    }

    /// C-CANCEL-RQ for the C-FIND, C-MOVE or C-GET request with `message_id_being_cancelled`.
    pub fn cancel_rq(message_id_being_cancelled: u16) -> Self {
        Command {
            message_id_being_responded_to: Some(message_id_being_cancelled),
            ..Command::new(CommandField::CCancelRq)
        }
    }

    /// N-ACTION-RQ of action `action_type` on SOP instance `sop_instance_uid` of class
    /// `sop_class_uid`; the action information follows as data set.
    pub fn action_rq(
        message_id: u16,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        action_type: u16,
    ) -> Self {
        Command {
            requested_sop_class_uid: Some(sop_class_uid.to_owned()),
            requested_sop_instance_uid: Some(sop_instance_uid.to_owned()),
            message_id: Some(message_id),
            action_type_id: Some(action_type),
            has_data_set: true,
            ..Command::new(CommandField::NActionRq)
        }
    }

    /// N-EVENT-REPORT-RSP to `rq`: its SOP class, instance and event type echoed (PS3.7
    /// Table 10.1-2), no data set.
    pub fn event_report_rsp(rq: &Command, status: Status) -> Self {
        Command {
            affected_sop_instance_uid: rq.affected_sop_instance_uid.clone(),
            event_type_id: rq.event_type_id,
            ..Command::response_to(rq, CommandField::NEventReportRsp, status)
        }
    }

    /// A response of kind `field` to request `rq`: same affected SOP class, its message ID
    /// echoed, the given status, no data set.
    fn response_to(rq: &Command, field: CommandField, status: Status) -> Self {
        Command {
            affected_sop_class_uid: rq.affected_sop_class_uid.clone(),
            message_id_being_responded_to: rq.message_id,
            status: Some(status),
            ..Command::new(field)
        }
    }

    /// C-ECHO-RSP to `rq`.
    pub fn echo_rsp(rq: &Command, status: Status) -> Self {
        Command::response_to(rq, CommandField::CEchoRsp, status)
    }

    /// C-STORE-RSP to `rq`, carrying the affected SOP instance UID of the request.
    pub fn store_rsp(rq: &Command, status: Status) -> Self {
        Command {
            affected_sop_instance_uid: rq.affected_sop_instance_uid.clone(),
            ..Command::response_to(rq, CommandField::CStoreRsp, status)
        }
    }

    /// C-FIND-RSP to `rq`. A pending response carries a matching identifier as data set; the
    /// final one (success, cancel, failure) carries none.
    pub fn find_rsp(rq: &Command, status: Status) -> Self {
        Command {
            has_data_set: status.is_pending(),
            ..Command::response_to(rq, CommandField::CFindRsp, status)
        }
    }

    /// C-MOVE-RSP to `rq` with sub-operation counts (the remaining count is sent only in
    /// pending and cancel responses, as PS3.4 C.4.2 asks).
    pub fn move_rsp(rq: &Command, status: Status, counts: SubOperations) -> Self {
        Command::response_to(rq, CommandField::CMoveRsp, status).with_counts(status, counts)
    }

    /// C-GET-RSP to `rq` with sub-operation counts (the remaining count is sent only in
    /// pending and cancel responses, as PS3.4 C.4.3 asks).
    pub fn get_rsp(rq: &Command, status: Status, counts: SubOperations) -> Self {
        Command::response_to(rq, CommandField::CGetRsp, status).with_counts(status, counts)
    }

    fn with_counts(mut self, status: Status, counts: SubOperations) -> Self {
        if matches!(status.class(), StatusClass::Pending | StatusClass::Cancel) {
            self.remaining_sub_operations = Some(counts.remaining);
        }
        self.completed_sub_operations = Some(counts.completed);
        self.failed_sub_operations = Some(counts.failed);
        self.warning_sub_operations = Some(counts.warning);
        self
    }

    /// This command with Error Comment (0000,0902) set, cut to the 64 characters LO allows,
    /// its control characters replaced by spaces ([`crate::logging::single_line`]).
    pub fn with_error_comment(mut self, comment: &str) -> Self {
        self.error_comment = Some(
            crate::logging::single_line(comment)
                .chars()
                .take(LO_MAX_CHARS)
                .collect(),
        );
        self
    }

    /// This C-STORE-RQ marked as a sub-operation of the C-MOVE `message_id` from `ae_title`.
    pub fn with_move_originator(mut self, ae_title: &str, message_id: u16) -> Self {
        self.move_originator_ae_title = Some(ae_title.to_owned());
        self.move_originator_message_id = Some(message_id);
        self
    }

    /// The sub-operation counts of a C-MOVE/C-GET response (absent ones read as zero).
    pub fn sub_operations(&self) -> SubOperations {
        SubOperations {
            remaining: self.remaining_sub_operations.unwrap_or(0),
            completed: self.completed_sub_operations.unwrap_or(0),
            failed: self.failed_sub_operations.unwrap_or(0),
            warning: self.warning_sub_operations.unwrap_or(0),
        }
    }
}

/// Writes one element header and value, padding the value to even length with `pad`.
fn put(out: &mut Vec<u8>, element: u16, value: &[u8], pad: u8) {
    let padded = value.len() + value.len() % 2;
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    // Command values are short strings and numbers; a value longer than u32::MAX cannot
    // be built from a `Command` in memory, so saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(padded).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(value);
    if padded != value.len() {
        out.push(pad);
    }
}

fn put_us(out: &mut Vec<u8>, element: u16, value: Option<u16>) {
    if let Some(v) = value {
        put(out, element, &v.to_le_bytes(), 0);
    }
}

fn put_uid(out: &mut Vec<u8>, element: u16, value: &Option<String>) {
    if let Some(v) = value {
        put(out, element, v.as_bytes(), 0);
    }
}

fn put_text(out: &mut Vec<u8>, element: u16, value: &Option<String>) {
    if let Some(v) = value {
        put(out, element, v.as_bytes(), b' ');
    }
}

/// Encodes a command set in Implicit VR Little Endian, elements in ascending tag order, with
/// Command Group Length (0000,0000) first.
pub fn encode(cmd: &Command) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    put_uid(
        &mut body,
        elem::AFFECTED_SOP_CLASS_UID,
        &cmd.affected_sop_class_uid,
    );
    put_uid(
        &mut body,
        elem::REQUESTED_SOP_CLASS_UID,
        &cmd.requested_sop_class_uid,
    );
    put_us(
        &mut body,
        elem::COMMAND_FIELD,
        Some(cmd.command_field.code()),
    );
    put_us(&mut body, elem::MESSAGE_ID, cmd.message_id);
    put_us(
        &mut body,
        elem::MESSAGE_ID_BEING_RESPONDED_TO,
        cmd.message_id_being_responded_to,
    );
    put_text(&mut body, elem::MOVE_DESTINATION, &cmd.move_destination);
    put_us(&mut body, elem::PRIORITY, cmd.priority.map(Priority::code));
    let data_set_type = if cmd.has_data_set {
        DATA_SET_PRESENT
    } else {
        NO_DATA_SET
    };
    put_us(&mut body, elem::COMMAND_DATA_SET_TYPE, Some(data_set_type));
    put_us(&mut body, elem::STATUS, cmd.status.map(|s| s.0));
    if !cmd.offending_elements.is_empty() {
        let mut tags = Vec::with_capacity(cmd.offending_elements.len() * 4);
        for tag in &cmd.offending_elements {
            tags.extend_from_slice(&tag.0.to_le_bytes());
            tags.extend_from_slice(&tag.1.to_le_bytes());
        }
        put(&mut body, elem::OFFENDING_ELEMENT, &tags, 0);
    }
    put_text(&mut body, elem::ERROR_COMMENT, &cmd.error_comment);
    put_us(&mut body, elem::ERROR_ID, cmd.error_id);
    put_uid(
        &mut body,
        elem::AFFECTED_SOP_INSTANCE_UID,
        &cmd.affected_sop_instance_uid,
    );
    put_uid(
        &mut body,
        elem::REQUESTED_SOP_INSTANCE_UID,
        &cmd.requested_sop_instance_uid,
    );
    put_us(&mut body, elem::EVENT_TYPE_ID, cmd.event_type_id);
    put_us(&mut body, elem::ACTION_TYPE_ID, cmd.action_type_id);
    put_us(&mut body, elem::REMAINING, cmd.remaining_sub_operations);
    put_us(&mut body, elem::COMPLETED, cmd.completed_sub_operations);
    put_us(&mut body, elem::FAILED, cmd.failed_sub_operations);
    put_us(&mut body, elem::WARNING, cmd.warning_sub_operations);
    put_text(
        &mut body,
        elem::MOVE_ORIGINATOR_AE_TITLE,
        &cmd.move_originator_ae_title,
    );
    put_us(
        &mut body,
        elem::MOVE_ORIGINATOR_MESSAGE_ID,
        cmd.move_originator_message_id,
    );

    let mut out = Vec::with_capacity(body.len() + 12);
    let group_length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    put(&mut out, elem::GROUP_LENGTH, &group_length.to_le_bytes(), 0);
    out.extend_from_slice(&body);
    out
}

fn read_us(tag: Tag, value: &[u8]) -> Result<u16, DimseError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(DimseError::InvalidLength {
            tag,
            length: value.len() as u32,
        }),
    }
}

/// A UID value without its NUL (or, from lax peers, space) padding.
fn read_uid(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

/// An AE/LO value without leading and trailing spaces (and stray NULs).
fn read_text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_matches([' ', '\0'])
        .to_owned()
}

fn read_tags(tag: Tag, value: &[u8]) -> Result<Vec<Tag>, DimseError> {
    if value.len() % 4 != 0 {
        return Err(DimseError::InvalidLength {
            tag,
            length: value.len() as u32,
        });
    }
    Ok(value
        .chunks_exact(4)
        .map(|c| {
            Tag(
                u16::from_le_bytes([c[0], c[1]]),
                u16::from_le_bytes([c[2], c[3]]),
            )
        })
        .collect())
}

/// Decodes an Implicit VR Little Endian command set.
///
/// Elements this codec does not know (and elements outside group 0000) are skipped. The
/// Command Group Length is not trusted: the whole input is read. Command Field and Command
/// Data Set Type are mandatory; everything else is optional here and checked by the service
/// that handles the command.
pub fn decode(bytes: &[u8]) -> Result<Command, DimseError> {
    let mut cmd = Command::new(CommandField::Other(0));
    let mut command_field = None;
    let mut data_set_type = None;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let header = bytes.get(offset..offset + 8).ok_or(DimseError::Truncated {
            offset,
            needed: 8,
            available: bytes.len() - offset,
        })?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let tag = Tag(group, element);
        if length == u32::MAX {
            return Err(DimseError::UndefinedLength(tag));
        }
        let start = offset + 8;
        let available = bytes.len() - start;
        let len = usize::try_from(length).unwrap_or(usize::MAX);
        if len > available {
            return Err(DimseError::Truncated {
                offset,
                needed: len,
                available,
            });
        }
        let value = &bytes[start..start + len];
        offset = start + len;
        if group != 0x0000 {
            continue;
        }
        match element {
            elem::AFFECTED_SOP_CLASS_UID => cmd.affected_sop_class_uid = Some(read_uid(value)),
            elem::REQUESTED_SOP_CLASS_UID => cmd.requested_sop_class_uid = Some(read_uid(value)),
            elem::COMMAND_FIELD => command_field = Some(read_us(tag, value)?),
            elem::MESSAGE_ID => cmd.message_id = Some(read_us(tag, value)?),
            elem::MESSAGE_ID_BEING_RESPONDED_TO => {
                cmd.message_id_being_responded_to = Some(read_us(tag, value)?)
            }
            elem::MOVE_DESTINATION => cmd.move_destination = Some(read_text(value)),
            elem::PRIORITY => cmd.priority = Some(Priority::from_code(read_us(tag, value)?)),
            elem::COMMAND_DATA_SET_TYPE => data_set_type = Some(read_us(tag, value)?),
            elem::STATUS => cmd.status = Some(Status(read_us(tag, value)?)),
            elem::OFFENDING_ELEMENT => cmd.offending_elements = read_tags(tag, value)?,
            elem::ERROR_COMMENT => cmd.error_comment = Some(read_text(value)),
            elem::ERROR_ID => cmd.error_id = Some(read_us(tag, value)?),
            elem::AFFECTED_SOP_INSTANCE_UID => {
                cmd.affected_sop_instance_uid = Some(read_uid(value))
            }
            elem::REQUESTED_SOP_INSTANCE_UID => {
                cmd.requested_sop_instance_uid = Some(read_uid(value))
            }
            elem::EVENT_TYPE_ID => cmd.event_type_id = Some(read_us(tag, value)?),
            elem::ACTION_TYPE_ID => cmd.action_type_id = Some(read_us(tag, value)?),
            elem::REMAINING => cmd.remaining_sub_operations = Some(read_us(tag, value)?),
            elem::COMPLETED => cmd.completed_sub_operations = Some(read_us(tag, value)?),
            elem::FAILED => cmd.failed_sub_operations = Some(read_us(tag, value)?),
            elem::WARNING => cmd.warning_sub_operations = Some(read_us(tag, value)?),
            elem::MOVE_ORIGINATOR_AE_TITLE => cmd.move_originator_ae_title = Some(read_text(value)),
            elem::MOVE_ORIGINATOR_MESSAGE_ID => {
                cmd.move_originator_message_id = Some(read_us(tag, value)?)
            }
            _ => {}
        }
    }
    let field = command_field.ok_or(DimseError::MissingElement(Tag(0, elem::COMMAND_FIELD)))?;
    let data_set_type = data_set_type.ok_or(DimseError::MissingElement(Tag(
        0,
        elem::COMMAND_DATA_SET_TYPE,
    )))?;
    cmd.command_field = CommandField::from_code(field);
    cmd.has_data_set = data_set_type != NO_DATA_SET;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    // Command sets captured on this machine from DCMTK 3.6.7 and Orthanc 1.10.1 over loopback
    // (strace of the SCU process, P-DATA command fragments extracted).

    /// `echoscu` C-ECHO-RQ.
    const DCMTK_ECHO_RQ: &str = "0000000004000000380000000000020012000000312e322e3834302e31303030382e312e3100000000010200000030000000100102000000010000000008020000000101";
    /// DCMTK `storescp` C-ECHO-RSP to it.
    const DCMTK_ECHO_RSP: &str = "0000000004000000420000000000020012000000312e322e3834302e31303030382e312e310000000001020000003080000020010200000001000000000802000000010100000009020000000000";
    /// `storescu` C-STORE-RQ of a DX for presentation instance.
    const DCMTK_STORE_RQ: &str = "000000000400000094000000000002001c000000312e322e3834302e31303030382e352e312e342e312e312e312e3100000000010200000001000000100102000000010000000007020000000000000000080200000001000000001040000000312e322e3832362e302e312e333638303034332e382e3439382e3330393231343039373633333134353838323135353736323835343130303736333938353530";
    /// DCMTK `storescp` C-STORE-RSP to it.
    const DCMTK_STORE_RSP: &str = "000000000400000094000000000002001c000000312e322e3834302e31303030382e352e312e342e312e312e312e3100000000010200000001800000200102000000010000000008020000000101000000090200000000000000001040000000312e322e3832362e302e312e333638303034332e382e3439382e3330393231343039373633333134353838323135353736323835343130303736333938353530";
    /// `findscu -S` C-FIND-RQ (Study Root).
    const DCMTK_FIND_RQ: &str = "00000000040000004c000000000002001c000000312e322e3834302e31303030382e352e312e342e312e322e322e310000000001020000002000000010010200000001000000000702000000000000000008020000000100";
    /// Orthanc's final C-FIND-RSP (success, no matches).
    const ORTHANC_FIND_RSP: &str = "00000000040000004c000000000002001c000000312e322e3834302e31303030382e352e312e342e312e322e322e310000000001020000002080000020010200000001000000000802000000010100000009020000000000";
    /// `movescu -S -aem FINDSCU` C-MOVE-RQ (Study Root).
    const DCMTK_MOVE_RQ: &str = "00000000040000005c000000000002001c000000312e322e3834302e31303030382e352e312e342e312e322e322e32000000000102000000210000001001020000000100000000060800000046494e44534355200000000702000000000000000008020000000100";
    /// Orthanc's C-MOVE-RSP to it (C000 unable to process, counts without remaining).
    const ORTHANC_MOVE_RSP: &str = "00000000040000006a000000000002001c000000312e322e3834302e31303030382e352e312e342e312e322e322e3200000000010200000021800000200102000000010000000008020000000101000000090200000000c0000021100200000000000000221002000000000000002310020000000000";

    const DX_INSTANCE: &str = "1.2.826.0.1.3680043.8.498.30921409763314588215576285410076398550";

    #[test]
    fn echo_matches_dcmtk_bytes() {
        let rq = decode(&unhex(DCMTK_ECHO_RQ)).unwrap();
        assert_eq!(rq.command_field, CommandField::CEchoRq);
        assert_eq!(
            rq.affected_sop_class_uid.as_deref(),
            Some(uids::VERIFICATION)
        );
        assert_eq!(rq.message_id, Some(1));
        assert!(!rq.has_data_set);
        assert_eq!(encode(&Command::echo_rq(1)), unhex(DCMTK_ECHO_RQ));
        assert_eq!(
            encode(&Command::echo_rsp(&rq, Status::SUCCESS)),
            unhex(DCMTK_ECHO_RSP)
        );
        let rsp = decode(&unhex(DCMTK_ECHO_RSP)).unwrap();
        assert_eq!(rsp, Command::echo_rsp(&rq, Status::SUCCESS));
    }

    #[test]
    fn store_matches_dcmtk_bytes() {
        let rq = decode(&unhex(DCMTK_STORE_RQ)).unwrap();
        assert_eq!(rq.command_field, CommandField::CStoreRq);
        assert_eq!(
            rq.affected_sop_class_uid.as_deref(),
            Some(uids::DIGITAL_XRAY_PRESENTATION)
        );
        assert_eq!(rq.affected_sop_instance_uid.as_deref(), Some(DX_INSTANCE));
        assert_eq!(rq.priority, Some(Priority::Medium));
        assert!(rq.has_data_set);
        let built = Command::store_rq(
            1,
            uids::DIGITAL_XRAY_PRESENTATION,
            DX_INSTANCE,
            Priority::Medium,
        );
        assert_eq!(built, rq);
        assert_eq!(encode(&built), unhex(DCMTK_STORE_RQ));
        assert_eq!(
            encode(&Command::store_rsp(&rq, Status::SUCCESS)),
            unhex(DCMTK_STORE_RSP)
        );
    }

    #[test]
    fn find_and_move_match_dcmtk_and_orthanc_bytes() {
        let find = decode(&unhex(DCMTK_FIND_RQ)).unwrap();
        let built = Command::find_rq(1, uids::STUDY_ROOT_QR_FIND, Priority::Medium);
        assert_eq!(find, built);
        assert_eq!(encode(&built), unhex(DCMTK_FIND_RQ));
        let final_rsp = Command::find_rsp(&find, Status::SUCCESS);
        assert!(!final_rsp.has_data_set);
        assert_eq!(encode(&final_rsp), unhex(ORTHANC_FIND_RSP));
        assert!(Command::find_rsp(&find, Status::PENDING).has_data_set);

        let mv = decode(&unhex(DCMTK_MOVE_RQ)).unwrap();
        assert_eq!(mv.move_destination.as_deref(), Some("FINDSCU"));
        let built = Command::move_rq(1, uids::STUDY_ROOT_QR_MOVE, Priority::Medium, "FINDSCU");
        assert_eq!(mv, built);
        assert_eq!(encode(&built), unhex(DCMTK_MOVE_RQ));
        let rsp = Command::move_rsp(&mv, Status::UNABLE_TO_PROCESS, SubOperations::default());
        assert_eq!(rsp.remaining_sub_operations, None);
        assert_eq!(encode(&rsp), unhex(ORTHANC_MOVE_RSP));
        assert_eq!(decode(&unhex(ORTHANC_MOVE_RSP)).unwrap(), rsp);
    }

    #[test]
    fn hand_built_cancel_matches_ps3_7() {
        // PS3.7 Table 9.3-20: C-CANCEL-RQ = Command Field 0FFF, Message ID Being Responded
        // To, Command Data Set Type 0101. Built by hand from the standard.
        let expected = unhex(concat!(
            "00000000", "04000000", "1e000000", // group length 30
            "00000001", "02000000", "ff0f", // command field
            "00002001", "02000000", "0700", // message id being responded to = 7
            "00000008", "02000000", "0101", // no data set
        ));
        assert_eq!(encode(&Command::cancel_rq(7)), expected);
        assert_eq!(decode(&expected).unwrap(), Command::cancel_rq(7));
    }

    #[test]
    fn hand_built_storage_commitment_action_matches_ps3_7() {
        // PS3.7 Table 10.3-4: N-ACTION-RQ = Requested SOP Class UID, Command Field 0130,
        // Message ID, Command Data Set Type (present), Requested SOP Instance UID, Action
        // Type ID; PS3.4 J.3.2: action 1 on the well-known Storage Commitment instance.
        let expected = unhex(concat!(
            "00000000",
            "04000000",
            "62000000", // group length 98
            "00000300",
            "14000000",
            "312e322e3834302e31303030382e312e32302e31",
            "00000001",
            "02000000",
            "3001", // command field
            "00001001",
            "02000000",
            "0100", // message id 1
            "00000008",
            "02000000",
            "0100", // a data set follows
            "00000110",
            "16000000",
            "312e322e3834302e31303030382e312e32302e312e31",
            "00000810",
            "02000000",
            "0100", // action type 1
        ));
        let built = Command::action_rq(
            1,
            uids::STORAGE_COMMITMENT_PUSH_MODEL,
            uids::STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
            1,
        );
        assert_eq!(encode(&built), expected);
        assert_eq!(decode(&expected).unwrap(), built);
        assert_eq!(built.command_field.to_string(), "N-ACTION-RQ");
    }

    #[test]
    fn an_event_report_is_answered_with_its_identity_and_no_data_set() {
        let mut rq = Command::new(CommandField::NEventReportRq);
        rq.affected_sop_class_uid = Some(uids::STORAGE_COMMITMENT_PUSH_MODEL.into());
        rq.affected_sop_instance_uid = Some(uids::STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE.into());
        rq.message_id = Some(9);
        rq.event_type_id = Some(2);
        rq.has_data_set = true;
        let rq = decode(&encode(&rq)).unwrap();
        let rsp = Command::event_report_rsp(&rq, Status::SUCCESS);
        assert_eq!(rsp.command_field, CommandField::NEventReportRsp);
        assert_eq!(rsp.message_id_being_responded_to, Some(9));
        assert_eq!(rsp.affected_sop_class_uid, rq.affected_sop_class_uid);
        assert_eq!(rsp.affected_sop_instance_uid, rq.affected_sop_instance_uid);
        assert_eq!(rsp.event_type_id, Some(2));
        assert!(!rsp.has_data_set);
        assert_eq!(decode(&encode(&rsp)).unwrap(), rsp);
    }

    #[test]
    fn group_length_and_ascending_order() {
        let cmd = Command::store_rq(9, "1.2.3", "1.2.34", Priority::High)
            .with_move_originator("PACS", 41)
            .with_error_comment("odd");
        let bytes = encode(&cmd);
        let group_length = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        assert_eq!(group_length as usize, bytes.len() - 12);
        let mut offset = 0;
        let mut last = None;
        while offset < bytes.len() {
            let element = u16::from_le_bytes([bytes[offset + 2], bytes[offset + 3]]);
            let len = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap());
            assert_eq!(len % 2, 0, "element {element:04X} has odd length");
            assert!(last < Some(element), "element {element:04X} out of order");
            last = Some(element);
            offset += 8 + len as usize;
        }
        // "1.2.3" padded with NUL, "odd" and "PACS" with space (PACS is already even).
        assert!(bytes.windows(6).any(|w| w == b"1.2.3\0"));
        assert!(bytes.windows(4).any(|w| w == b"odd "));
        assert_eq!(decode(&bytes).unwrap(), cmd);
    }

    #[test]
    fn round_trip_every_field() {
        let mut cmd = Command::new(CommandField::CGetRsp);
        cmd.affected_sop_class_uid = Some(uids::STUDY_ROOT_QR_GET.into());
        cmd.requested_sop_class_uid = Some("1.2.840.10008.5.1.4.1.1.7".into());
        cmd.message_id = Some(3);
        cmd.message_id_being_responded_to = Some(65535);
        cmd.move_destination = Some("DEST_AE".into());
        cmd.priority = Some(Priority::Low);
        cmd.has_data_set = true;
        cmd.status = Some(Status::SUB_OPERATIONS_COMPLETE_WITH_FAILURES);
        cmd.offending_elements = vec![Tag(0x0010, 0x0010), Tag(0x0020, 0x000D)];
        cmd.error_comment = Some("some error".into());
        cmd.error_id = Some(12);
        cmd.affected_sop_instance_uid = Some("1.2.3.4.5".into());
        cmd.requested_sop_instance_uid = Some("1.2.3.4.56".into());
        cmd.event_type_id = Some(2);
        cmd.action_type_id = Some(1);
        cmd.remaining_sub_operations = Some(1);
        cmd.completed_sub_operations = Some(2);
        cmd.failed_sub_operations = Some(3);
        cmd.warning_sub_operations = Some(4);
        cmd.move_originator_ae_title = Some("ORIG".into());
        cmd.move_originator_message_id = Some(5);
        assert_eq!(decode(&encode(&cmd)).unwrap(), cmd);
        for field in [
            0x0001u16, 0x8001, 0x0010, 0x8010, 0x0020, 0x8020, 0x0021, 0x8021, 0x0030, 0x8030,
            0x0FFF, 0x0100, 0x8100, 0x0130, 0x8130, 0x0140,
        ] {
            let c = Command::new(CommandField::from_code(field));
            assert_eq!(c.command_field.code(), field);
            assert_eq!(decode(&encode(&c)).unwrap(), c);
        }
        assert_eq!(CommandField::from_code(0x0140), CommandField::Other(0x0140));
    }

    #[test]
    fn response_constructors_carry_request_identity() {
        let rq = Command::get_rq(77, uids::STUDY_ROOT_QR_GET, Priority::High);
        let counts = SubOperations {
            remaining: 5,
            completed: 2,
            failed: 1,
            warning: 0,
        };
        let pending = Command::get_rsp(&rq, Status::PENDING, counts);
        assert_eq!(pending.command_field, CommandField::CGetRsp);
        assert_eq!(pending.message_id_being_responded_to, Some(77));
        assert_eq!(pending.affected_sop_class_uid, rq.affected_sop_class_uid);
        assert_eq!(pending.sub_operations(), counts);
        assert!(!pending.has_data_set);
        let done = Command::get_rsp(&rq, Status::SUCCESS, counts);
        assert_eq!(done.remaining_sub_operations, None);
        assert_eq!(done.completed_sub_operations, Some(2));
        let cancelled = Command::move_rsp(&rq, Status::CANCEL, counts);
        assert_eq!(cancelled.remaining_sub_operations, Some(5));
        assert_eq!(cancelled.command_field, CommandField::CMoveRsp);
        let long = "x".repeat(100);
        assert_eq!(
            Command::echo_rsp(&rq, Status::UNABLE_TO_PROCESS)
                .with_error_comment(&long)
                .error_comment
                .map(|c| c.len()),
            Some(64)
        );
        assert!(CommandField::CFindRsp.is_response());
        assert!(!CommandField::CCancelRq.is_response());
        assert_eq!(CommandField::CCancelRq.to_string(), "C-CANCEL-RQ");
        assert_eq!(CommandField::Other(0x0140).to_string(), "command 0140H");
    }

    #[test]
    fn decode_skips_unknown_and_tolerates_padding() {
        let mut bytes = unhex(DCMTK_ECHO_RQ);
        // An unknown group-0000 element and a non-command element are skipped.
        bytes.extend_from_slice(&unhex("0000ee0f0400000001020304"));
        bytes.extend_from_slice(&unhex("080016000200000041ff"));
        let cmd = decode(&bytes).unwrap();
        assert_eq!(cmd, Command::echo_rq(1));
        // A space-padded UID from a lax peer and an AE with leading spaces.
        let mut c = Command::move_rq(2, "1.2.3 ", Priority::Medium, " AE1");
        c.has_data_set = true;
        let d = decode(&encode(&c)).unwrap();
        assert_eq!(d.affected_sop_class_uid.as_deref(), Some("1.2.3"));
        assert_eq!(d.move_destination.as_deref(), Some("AE1"));
    }

    #[test]
    fn decode_reports_typed_errors() {
        let full = unhex(DCMTK_ECHO_RQ);
        assert!(matches!(
            decode(&full[..full.len() - 1]),
            Err(DimseError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&full[..5]),
            Err(DimseError::Truncated { .. })
        ));
        assert_eq!(
            decode(&unhex("00000001ffffffff")),
            Err(DimseError::UndefinedLength(Tag(0, 0x0100)))
        );
        assert_eq!(
            decode(&unhex("0000000103000000010000")),
            Err(DimseError::InvalidLength {
                tag: Tag(0, 0x0100),
                length: 3
            })
        );
        assert_eq!(
            decode(&unhex("00000008020000000101")),
            Err(DimseError::MissingElement(Tag(0, 0x0100)))
        );
        assert_eq!(
            decode(&unhex("00000001020000003000")),
            Err(DimseError::MissingElement(Tag(0, 0x0800)))
        );
        assert_eq!(
            decode(&unhex("000001090300000001020300000001020000003000")),
            Err(DimseError::InvalidLength {
                tag: Tag(0, 0x0901),
                length: 3
            })
        );
        assert!(decode(&[]).is_err());
        // A huge announced length never allocates: it is a truncation error.
        assert!(matches!(
            decode(&unhex("00000200fffffff0")),
            Err(DimseError::Truncated {
                needed: 0xf0ff_ffff,
                ..
            })
        ));
    }

    #[test]
    fn decode_never_panics_on_random_or_truncated_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xD1C0);
        let fixtures: Vec<Vec<u8>> = [DCMTK_STORE_RQ, DCMTK_MOVE_RQ, ORTHANC_MOVE_RSP]
            .iter()
            .map(|h| unhex(h))
            .collect();
        for i in 0..10_000 {
            let input: Vec<u8> = match i % 3 {
                0 => {
                    let len = rng.gen_range(0..200);
                    (0..len).map(|_| rng.gen()).collect()
                }
                1 => {
                    let f = &fixtures[i % fixtures.len()];
                    f[..rng.gen_range(0..=f.len())].to_vec()
                }
                _ => {
                    let mut f = fixtures[i % fixtures.len()].clone();
                    for _ in 0..rng.gen_range(1..4) {
                        let at = rng.gen_range(0..f.len());
                        f[at] = rng.gen();
                    }
                    f
                }
            };
            if let Ok(cmd) = decode(&input) {
                // Whatever decodes must re-encode and decode to the same command.
                assert_eq!(decode(&encode(&cmd)).unwrap(), cmd);
            }
        }
    }
}
