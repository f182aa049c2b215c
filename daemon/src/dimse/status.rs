//! DIMSE status codes (PS3.7 Annex C, PS3.4 service-specific codes) and their classes.
//!
//! The same code can carry a different meaning in different services (B000 is "coercion of
//! data elements" for C-STORE and "sub-operations complete with failures" for C-MOVE/C-GET);
//! such codes have one constant per meaning with the same value.

use std::fmt;

/// A DIMSE status code, the value of Status (0000,0900).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub u16);

/// The class of a status code, which decides how a peer continues (PS3.7 Annex C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// The operation completed.
    Success,
    /// More responses follow (C-FIND, C-MOVE, C-GET).
    Pending,
    /// The operation was cancelled by a C-CANCEL request.
    Cancel,
    /// The operation completed with a warning.
    Warning,
    /// The operation failed or was refused.
    Failure,
}

impl Status {
    /// Success (0000).
    pub const SUCCESS: Status = Status(0x0000);
    /// Pending: matches or sub-operations are continuing (FF00).
    pub const PENDING: Status = Status(0xFF00);
    /// Pending: matches continue, but one or more optional keys were not supported (FF01).
    pub const PENDING_WARNING: Status = Status(0xFF01);
    /// Cancel: the operation was terminated by a C-CANCEL request (FE00).
    pub const CANCEL: Status = Status(0xFE00);

    /// Warning (C-STORE): coercion of data elements (B000).
    pub const COERCION_OF_DATA_ELEMENTS: Status = Status(0xB000);
    /// Warning (C-MOVE/C-GET): sub-operations complete, one or more failures or warnings (B000).
    pub const SUB_OPERATIONS_COMPLETE_WITH_FAILURES: Status = Status(0xB000);
    /// Warning (C-STORE): elements discarded (B006).
    pub const ELEMENTS_DISCARDED: Status = Status(0xB006);
    /// Warning (C-STORE): data set does not match SOP class (B007).
    pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING: Status = Status(0xB007);
    /// Warning (general): requested optional attributes are not supported (0001).
    pub const OPTIONAL_ATTRIBUTES_NOT_SUPPORTED: Status = Status(0x0001);
    /// Warning (general): attribute list error (0107).
    pub const ATTRIBUTE_LIST_ERROR: Status = Status(0x0107);
    /// Warning (general): attribute value out of range (0116).
    pub const ATTRIBUTE_VALUE_OUT_OF_RANGE: Status = Status(0x0116);

    /// Refused: out of resources (A700).
    pub const OUT_OF_RESOURCES: Status = Status(0xA700);
    /// Refused (C-MOVE/C-GET): out of resources, unable to calculate number of matches (A701).
    pub const OUT_OF_RESOURCES_MATCHES: Status = Status(0xA701);
    /// Refused (C-MOVE/C-GET): out of resources, unable to perform sub-operations (A702).
    pub const OUT_OF_RESOURCES_SUB_OPERATIONS: Status = Status(0xA702);
    /// Refused (C-MOVE): move destination unknown (A801).
    pub const MOVE_DESTINATION_UNKNOWN: Status = Status(0xA801);
    /// Error (C-STORE): data set does not match SOP class (A900).
    pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Status = Status(0xA900);
    /// Failed (C-FIND/C-MOVE/C-GET): identifier does not match SOP class (A900).
    pub const IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Status = Status(0xA900);
    /// Error (C-STORE): cannot understand (C000; the whole C000-CFFF range means this).
    pub const CANNOT_UNDERSTAND: Status = Status(0xC000);
    /// Failed (C-FIND/C-MOVE/C-GET): unable to process (C000; the whole C000-CFFF range).
    pub const UNABLE_TO_PROCESS: Status = Status(0xC000);
    /// Failed: unable to process because the received data set could not be decoded (C001, in
    /// the "unable to process" range).
    pub const UNABLE_TO_DECODE: Status = Status(0xC001);
    /// Failed: unable to process because the instance could not be stored (C002, in the
    /// "unable to process" range).
    pub const UNABLE_TO_STORE: Status = Status(0xC002);

    /// Failure (general): no such attribute (0105).
    pub const NO_SUCH_ATTRIBUTE: Status = Status(0x0105);
    /// Failure (general): invalid attribute value (0106).
    pub const INVALID_ATTRIBUTE_VALUE: Status = Status(0x0106);
    /// Failure (general): processing failure (0110).
    pub const PROCESSING_FAILURE: Status = Status(0x0110);
    /// Failure (general): duplicate SOP instance (0111).
    pub const DUPLICATE_SOP_INSTANCE: Status = Status(0x0111);
    /// Failure (general): no such SOP instance (0112).
    pub const NO_SUCH_SOP_INSTANCE: Status = Status(0x0112);
    /// Failure: no such event type (N-EVENT-REPORT).
    pub const NO_SUCH_EVENT_TYPE: Status = Status(0x0113);
    /// Failure (general): no such SOP class (0118).
    pub const NO_SUCH_SOP_CLASS: Status = Status(0x0118);
    /// Failure (general): missing attribute (0120).
    pub const MISSING_ATTRIBUTE: Status = Status(0x0120);
    /// Refused: SOP class not supported (0122).
    pub const SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    /// Refused: not authorized (0124).
    pub const NOT_AUTHORIZED: Status = Status(0x0124);
    /// Failure (general): duplicate invocation, the message ID is already in use (0210).
    pub const DUPLICATE_INVOCATION: Status = Status(0x0210);
    /// Failure (general): unrecognized operation (0211).
    pub const UNRECOGNIZED_OPERATION: Status = Status(0x0211);
    /// Failure (general): mistyped argument (0212).
    pub const MISTYPED_ARGUMENT: Status = Status(0x0212);
    /// Failure (general): resource limitation (0213).
    pub const RESOURCE_LIMITATION: Status = Status(0x0213);

    /// The class of this status code (PS3.7 Annex C): 0000 success, FF00/FF01 pending, FE00
    /// cancel, 0001/0107/0116/Bxxx warning, everything else failure.
    pub fn class(self) -> StatusClass {
        match self.0 {
            0x0000 => StatusClass::Success,
            0xFF00 | 0xFF01 => StatusClass::Pending,
            0xFE00 => StatusClass::Cancel,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusClass::Warning,
            _ => StatusClass::Failure,
        }
    }

    /// True for the pending class: more responses to the same request follow.
    pub fn is_pending(self) -> bool {
        self.class() == StatusClass::Pending
    }

    /// True for success and warning: the operation's outcome is usable.
    pub fn is_ok(self) -> bool {
        matches!(self.class(), StatusClass::Success | StatusClass::Warning)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}H ({:?})", self.0, self.class())
    }
}

impl From<u16> for Status {
    fn from(code: u16) -> Self {
        Status(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_annex_c() {
        assert_eq!(Status::SUCCESS.class(), StatusClass::Success);
        assert_eq!(Status::PENDING.class(), StatusClass::Pending);
        assert_eq!(Status::PENDING_WARNING.class(), StatusClass::Pending);
        assert_eq!(Status::CANCEL.class(), StatusClass::Cancel);
        for w in [0xB000, 0xB006, 0xB007, 0xBFFF, 0x0001, 0x0107, 0x0116] {
            assert_eq!(Status(w).class(), StatusClass::Warning, "{w:04X}");
        }
        for f in [
            0xA700, 0xA701, 0xA702, 0xA7FF, 0xA801, 0xA900, 0xC000, 0xC001, 0xCFFF, 0x0122, 0x0124,
            0x0210, 0x0211, 0x0212, 0x0110, 0xFE01, 0xFF02, 0x0002,
        ] {
            assert_eq!(Status(f).class(), StatusClass::Failure, "{f:04X}");
        }
    }

    #[test]
    fn constant_values_match_the_standard() {
        assert_eq!(Status::MOVE_DESTINATION_UNKNOWN.0, 0xA801);
        assert_eq!(Status::SOP_CLASS_NOT_SUPPORTED.0, 0x0122);
        assert_eq!(Status::NOT_AUTHORIZED.0, 0x0124);
        assert_eq!(Status::DUPLICATE_INVOCATION.0, 0x0210);
        assert_eq!(Status::UNRECOGNIZED_OPERATION.0, 0x0211);
        assert_eq!(Status::MISTYPED_ARGUMENT.0, 0x0212);
        assert_eq!(
            Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            Status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        );
        assert_eq!(Status::OUT_OF_RESOURCES_SUB_OPERATIONS.0, 0xA702);
    }

    #[test]
    fn helpers_and_display() {
        assert!(Status::PENDING.is_pending());
        assert!(!Status::SUCCESS.is_pending());
        assert!(Status::SUCCESS.is_ok());
        assert!(Status::ELEMENTS_DISCARDED.is_ok());
        assert!(!Status::CANCEL.is_ok());
        assert!(!Status::OUT_OF_RESOURCES.is_ok());
        assert_eq!(
            Status::MOVE_DESTINATION_UNKNOWN.to_string(),
            "A801H (Failure)"
        );
        assert_eq!(Status::from(0xFF00), Status::PENDING);
    }
}
