//! The Verification service (C-ECHO SCP).

use crate::dimse::command::Command;
use crate::dimse::status::Status;

/// The response to a C-ECHO-RQ: Success, echoing its message id.
pub fn respond(rq: &Command) -> Command {
    Command::echo_rsp(rq, Status::SUCCESS)
}
