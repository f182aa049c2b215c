//! DULI Edge daemon library.

/// DIMSE message codec: command sets, status codes, SOP class UIDs and P-DATA reassembly.
pub mod dimse;
