//! Wall-clock helpers: Unix seconds and DICOM date and time strings, and the one reading
//! of a DICOM date or time received from outside (HL7 timestamps are written by
//! `deliver::hl7::message`, from these).

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

/// The monotonic instant that wall-clock time `wall_ms` (ms since the epoch) was, seen at
/// wall-clock `now_ms` and monotonic `now`: a time in the future counts as `now`, and one
/// before the monotonic clock began (shortly after a boot) as `now` too.
pub fn instant_of_wall(wall_ms: i64, now_ms: i64, now: std::time::Instant) -> std::time::Instant {
    let ago = std::time::Duration::from_millis(now_ms.saturating_sub(wall_ms).max(0) as u64);
    now.checked_sub(ago).unwrap_or(now)
}

/// The wall-clock time (ms since the epoch) of monotonic `at`, seen at wall-clock `now_ms`
/// and monotonic `now`.
pub fn wall_of_instant(at: std::time::Instant, now_ms: i64, now: std::time::Instant) -> i64 {
    let ago = i64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(ago)
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

/// Seconds east of UTC of the box's local time (its time zone: `/etc/localtime`, or `TZ`)
/// at Unix seconds `unix`; 0 when the C library cannot tell.
pub fn local_offset_secs(unix: i64) -> i32 {
    let t: nix::libc::time_t = unix;
    let mut tm = std::mem::MaybeUninit::<nix::libc::tm>::zeroed();
    // SAFETY: localtime_r (POSIX, thread-safe) reads `t` and writes only into `tm`, which
    // outlives the call; `tm` is read only after it returned non-null (filled in).
    let filled = unsafe { !nix::libc::localtime_r(&t, tm.as_mut_ptr()).is_null() };
    if !filled {
        return 0;
    }
    // SAFETY: localtime_r succeeded, so it wrote every field of `tm`.
    let tm = unsafe { tm.assume_init() };
    i32::try_from(tm.tm_gmtoff)
        .unwrap_or(0)
        .clamp(-14 * 3600, 14 * 3600)
}

/// DICOM DA and TM of Unix seconds `unix` in the time `offset_secs` east of UTC, with
/// that offset as Timezone Offset From UTC (0008,0201) writes it (`+HHMM`); a time
/// outside the calendar's range is written as the epoch.
pub fn dicom_date_time_at(unix: i64, offset_secs: i32) -> (String, String, String) {
    let offset = time::UtcOffset::from_whole_seconds(offset_secs).unwrap_or(time::UtcOffset::UTC);
    let t = time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    let (h, m, _) = offset.as_hms();
    let sign = if offset.is_negative() { '-' } else { '+' };
    (
        dicom_date(t.date()),
        format!("{:02}{:02}{:02}", t.hour(), t.minute(), t.second()),
        format!("{sign}{:02}{:02}", h.unsigned_abs(), m.unsigned_abs()),
    )
}

/// [`dicom_date_time_at`] in the box's local time: what the DA and TM of an object this box
/// makes mean to a reader (DICOM dates and times are local time), with the offset.
pub fn dicom_local_date_time(unix: i64) -> (String, String, String) {
    dicom_date_time_at(unix, local_offset_secs(unix))
}

/// A DICOM DA received from outside as `YYYYMMDD`: the value itself, or the old ACR-NEMA
/// `YYYY.MM.DD` without its dots. Anything that is not a plausible date gives an empty
/// string (the attribute is then left empty).
pub fn normalise_da(da: &str) -> String {
    let digits: String = da.trim().chars().filter(|c| *c != '.').collect();
    if digits.len() != 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return String::new();
    }
    let month: u32 = digits[4..6].parse().unwrap_or(0);
    let day: u32 = digits[6..8].parse().unwrap_or(0);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return String::new();
    }
    digits
}

/// A DICOM TM received from outside as `HH[MM[SS[.F{1,6}]]]`: the value itself, or the old
/// ACR-NEMA `HH:MM:SS` without its colons; a fraction is kept (at most 6 digits) only after
/// whole seconds. Anything that is not a plausible time gives an empty string.
pub fn normalise_tm(tm: &str) -> String {
    let tm: String = tm.trim().chars().filter(|c| *c != ':').collect();
    let (whole, frac) = match tm.split_once('.') {
        Some((w, f)) => (w, f),
        None => (tm.as_str(), ""),
    };
    if !matches!(whole.len(), 2 | 4 | 6) || !whole.chars().all(|c| c.is_ascii_digit()) {
        return String::new();
    }
    let field = |i: usize| whole.get(i..i + 2).and_then(|s| s.parse::<u32>().ok());
    if field(0).is_some_and(|h| h > 23)
        || field(2).is_some_and(|m| m > 59)
        || field(4).is_some_and(|s| s > 60)
    {
        return String::new();
    }
    if whole.len() == 6 && !frac.is_empty() && frac.chars().all(|c| c.is_ascii_digit()) {
        format!("{whole}.{}", &frac[..frac.len().min(6)])
    } else {
        whole.to_string()
    }
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
        // Local time: 23:30 UTC on 31 January is 00:30 on 1 February in UTC+1, and 18:00
        // on the 31st in UTC-5:30.
        let late = 1_706_743_800; // 2024-01-31T23:30:00Z
        assert_eq!(
            dicom_date_time_at(late, 3600),
            ("20240201".into(), "003000".into(), "+0100".into())
        );
        assert_eq!(
            dicom_date_time_at(late, -(5 * 3600 + 1800)),
            ("20240131".into(), "180000".into(), "-0530".into())
        );
        assert_eq!(
            dicom_date_time_at(late, 0),
            ("20240131".into(), "233000".into(), "+0000".into())
        );
    }

    /// The box's offset is the C library's, as `date +%z` prints it.
    #[test]
    fn the_local_offset_is_the_system_s() {
        let now = now_secs();
        let Ok(out) = std::process::Command::new("date")
            .args(["+%z", "-d", &format!("@{now}")])
            .output()
        else {
            return;
        };
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(dicom_local_date_time(now).2, printed);
    }

    #[test]
    fn dates_and_times_from_outside_are_read_in_their_old_forms_too() {
        assert_eq!(normalise_da("19800215"), "19800215");
        assert_eq!(normalise_da(" 1980.02.15 "), "19800215");
        for bad in [
            "19801315",
            "19800200",
            "garbage",
            "1980-02-15",
            "",
            "1980021",
        ] {
            assert_eq!(normalise_da(bad), "", "{bad:?}");
        }
        assert_eq!(normalise_tm("093015"), "093015");
        assert_eq!(normalise_tm("09:30:15"), "093015");
        assert_eq!(normalise_tm("093015.1234567"), "093015.123456");
        assert_eq!(normalise_tm("0930"), "0930");
        assert_eq!(normalise_tm("09"), "09");
        for bad in ["2561", "093", "9:30", "garbage", "24", ""] {
            assert_eq!(normalise_tm(bad), "", "{bad:?}");
        }
    }
}
