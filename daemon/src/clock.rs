//! Wall-clock helpers: Unix seconds and DICOM date and time strings (HL7 timestamps are
//! written by `deliver::hl7::message`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// DICOM DA (`YYYYMMDD`) of a calendar date.
pub fn dicom_date(d: time::Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

/// DICOM DA and TM (`HHMMSS`), in UTC, of Unix seconds; a time outside the calendar's
/// range is written as the epoch.
pub fn dicom_date_time(unix: i64) -> (String, String) {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (
        dicom_date(t.date()),
        format!("{:02}{:02}{:02}", t.hour(), t.minute(), t.second()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dicom_date_and_time_of_unix_seconds() {
        assert_eq!(
            dicom_date_time(1_764_892_800 + 3_723),
            ("20251205".to_string(), "010203".to_string())
        );
        assert_eq!(
            dicom_date_time(i64::MAX),
            ("19700101".to_string(), "000000".to_string())
        );
    }
}
