//! The patient's age at the study, in decimal years: Patient's Age (0010,1010) when it is
//! a valid Age String, else computed from Patient's Birth Date (0010,0030) and Study Date
//! (0008,0020). Anything else is unknown (never a guess, never a panic).

/// Days per year used to turn day, week and date differences into years.
const DAYS_PER_YEAR: f64 = 365.25;

/// Where an age came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Age {
    /// From Patient's Age, in years.
    Stated(f64),
    /// From the birth date and the study date, in years.
    Computed(f64),
    /// Neither is usable.
    Unknown,
}

impl Age {
    /// The age in years, when known.
    pub fn years(self) -> Option<f64> {
        match self {
            Age::Stated(y) | Age::Computed(y) => Some(y),
            Age::Unknown => None,
        }
    }
}

/// An Age String (`nnnD`, `nnnW`, `nnnM`, `nnnY`) in years.
pub fn parse_age_string(s: &str) -> Option<f64> {
    let s = s.trim_matches([' ', '\0']);
    if s.len() != 4 || !s.is_ascii() {
        return None;
    }
    let (digits, unit) = s.split_at(3);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: f64 = digits.parse::<u16>().ok()?.into();
    match unit {
        "D" => Some(n / DAYS_PER_YEAR),
        "W" => Some(n * 7.0 / DAYS_PER_YEAR),
        "M" => Some(n / 12.0),
        "Y" => Some(n),
        _ => None,
    }
}

/// A DICOM date (`YYYYMMDD`, or the old `YYYY.MM.DD`) as a calendar date.
pub fn parse_date(s: &str) -> Option<time::Date> {
    let s: String = s
        .trim_matches([' ', '\0'])
        .chars()
        .filter(|&c| c != '.')
        .collect();
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = s[..4].parse().ok()?;
    let month: u8 = s[4..6].parse().ok()?;
    let day: u8 = s[6..].parse().ok()?;
    time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

/// The age from the three attributes' values (empty when absent).
pub fn patient_age(age_string: &str, birth_date: &str, study_date: &str) -> Age {
    if let Some(y) = parse_age_string(age_string) {
        return Age::Stated(y);
    }
    match (parse_date(birth_date), parse_date(study_date)) {
        (Some(birth), Some(study)) if study >= birth => {
            Age::Computed((study - birth).whole_days() as f64 / DAYS_PER_YEAR)
        }
        _ => Age::Unknown,
    }
}

/// An age for people: "45 y", "18 mo", "3 wk", "5 d".
pub fn describe(years: f64) -> String {
    if years >= 2.0 {
        format!("{} y", years.floor())
    } else if years >= 1.0 / 12.0 {
        format!("{} mo", (years * 12.0).floor())
    } else if years * DAYS_PER_YEAR >= 14.0 {
        format!("{} wk", (years * DAYS_PER_YEAR / 7.0).floor())
    } else {
        format!("{} d", (years * DAYS_PER_YEAR).round())
    }
}

/// A range bound for people: "1", "5", "0.5".
pub fn bound(years: f64) -> String {
    let s = format!("{years:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_strings_in_every_unit() {
        assert_eq!(parse_age_string("045Y"), Some(45.0));
        assert_eq!(parse_age_string("018M"), Some(1.5));
        assert_eq!(
            parse_age_string("052W").map(|y| (y * 100.0).round()),
            Some(100.0)
        );
        assert!(parse_age_string("010D").unwrap() < 0.03);
        for bad in ["", "45Y", "0045Y", "04 Y", "045X", "-45Y", "\u{e9}45Y"] {
            assert_eq!(parse_age_string(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn age_stated_else_computed_from_dates_else_unknown() {
        assert_eq!(
            patient_age("003Y", "19800101", "20250101"),
            Age::Stated(3.0)
        );
        let a = patient_age("", "19800301", "20250303").years().unwrap();
        assert!((a - 45.0).abs() < 0.02, "{a}");
        assert!(matches!(
            patient_age("", "19800301", "20250303"),
            Age::Computed(_)
        ));
        assert_eq!(patient_age("", "20250101", "20240101"), Age::Unknown);
        assert_eq!(patient_age("", "20241301", "20250101"), Age::Unknown);
        assert_eq!(patient_age("", "", "20250101"), Age::Unknown);
        assert_eq!(patient_age("abc", "2024", ""), Age::Unknown);
        assert_eq!(
            parse_date("2024.02.29"),
            time::Date::from_calendar_date(2024, time::Month::February, 29).ok()
        );
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(describe(45.7), "45 y");
        assert_eq!(describe(1.5), "18 mo");
        assert_eq!(describe(0.1), "1 mo");
        assert_eq!(describe(21.0 / DAYS_PER_YEAR), "3 wk");
        assert_eq!(bound(1.0), "1");
        assert_eq!(bound(0.5), "0.5");
    }
}
