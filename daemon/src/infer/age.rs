//! The patient's age at the study, as people state it: in completed calendar units (the
//! child who turned five last month is five, and one on the day of the first birthday).
//! Patient's Age (0010,1010) when it is a valid Age String, else computed from Patient's
//! Birth Date (0010,0030) and Study Date (0008,0020) by the calendar. Anything else is
//! unknown (never a guess, never a panic).
//!
//! A model's age range is inclusive of the whole unit its bounds are given in
//! ([`Completed::within`]): "1–5 y" takes a child from the first birthday until the day
//! before the sixth, the way such ranges are written in a model's intended use.

/// Days per year used to turn day and week counts into months.
const DAYS_PER_YEAR: f64 = 365.25;

/// An age in completed months, and the whole days lived (for ages under a month).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// Completed months.
    pub months: u32,
    /// Whole days.
    pub days: u32,
}

impl Completed {
    fn of_days(days: u32) -> Completed {
        Completed {
            months: (f64::from(days) * 12.0 / DAYS_PER_YEAR).floor() as u32,
            days,
        }
    }

    /// Whether the age lies in the range `lo..=hi` (years; either end open when `None`),
    /// each bound inclusive of its whole unit: a bound in whole years is compared with
    /// the completed years, any other (0.5 = six months) with the completed months.
    pub fn within(self, lo: Option<f64>, hi: Option<f64>) -> bool {
        let in_unit = |bound: f64| -> (u32, f64) {
            if bound.fract() == 0.0 {
                (self.months / 12, bound)
            } else {
                (self.months, (bound * 12.0).round())
            }
        };
        let above = lo.is_none_or(|lo| {
            let (age, lo) = in_unit(lo);
            f64::from(age) >= lo
        });
        let below = hi.is_none_or(|hi| {
            let (age, hi) = in_unit(hi);
            f64::from(age) <= hi
        });
        above && below
    }

    /// The age as an Age String (PS3.5, AS) in the unit [`Completed::describe`] uses:
    /// `045Y`, `018M`, `003W`, `005D` (at most `999Y`).
    pub fn as_age_string(self) -> String {
        if self.months >= 24 {
            format!("{:03}Y", (self.months / 12).min(999))
        } else if self.months >= 1 {
            format!("{:03}M", self.months)
        } else if self.days >= 14 {
            format!("{:03}W", self.days / 7)
        } else {
            format!("{:03}D", self.days)
        }
    }

    /// The age for people: "45 y", "18 mo", "3 wk", "5 d".
    pub fn describe(self) -> String {
        if self.months >= 24 {
            format!("{} y", self.months / 12)
        } else if self.months >= 1 {
            format!("{} mo", self.months)
        } else if self.days >= 14 {
            format!("{} wk", self.days / 7)
        } else {
            format!("{} d", self.days)
        }
    }
}

/// Where an age came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    /// From Patient's Age.
    Stated(Completed),
    /// From the birth date and the study date.
    Computed(Completed),
    /// Neither is usable.
    Unknown,
}

impl Age {
    /// The age, when known.
    pub fn completed(self) -> Option<Completed> {
        match self {
            Age::Stated(a) | Age::Computed(a) => Some(a),
            Age::Unknown => None,
        }
    }
}

/// An Age String (`nnnD`, `nnnW`, `nnnM`, `nnnY`).
pub fn parse_age_string(s: &str) -> Option<Completed> {
    let s = s.trim_matches([' ', '\0']);
    if s.len() != 4 || !s.is_ascii() {
        return None;
    }
    let (digits, unit) = s.split_at(3);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse::<u16>().ok()?.into();
    match unit {
        "D" => Some(Completed::of_days(n)),
        "W" => Some(Completed::of_days(n * 7)),
        "M" => Some(Completed {
            months: n,
            days: (f64::from(n) * DAYS_PER_YEAR / 12.0) as u32,
        }),
        "Y" => Some(Completed {
            months: n * 12,
            days: (f64::from(n) * DAYS_PER_YEAR) as u32,
        }),
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

/// The completed months from `birth` to `on` by the calendar: a month is completed on the
/// day of the month the birth fell on (or the month's last day, when it is shorter).
fn completed_months(birth: time::Date, on: time::Date) -> u32 {
    let months = (on.year() - birth.year()) * 12 + i32::from(u8::from(on.month()))
        - i32::from(u8::from(birth.month()));
    let month_end = on.month().length(on.year());
    let day_reached = on.day() >= birth.day() || on.day() == month_end;
    let months = if day_reached { months } else { months - 1 };
    u32::try_from(months).unwrap_or(0)
}

/// The age from the three attributes' values (empty when absent).
pub fn patient_age(age_string: &str, birth_date: &str, study_date: &str) -> Age {
    if let Some(a) = parse_age_string(age_string) {
        return Age::Stated(a);
    }
    match computed_age(birth_date, study_date) {
        Some(a) => Age::Computed(a),
        None => Age::Unknown,
    }
}

/// The age from the birth date and the study date, when both are usable.
pub fn computed_age(birth_date: &str, study_date: &str) -> Option<Completed> {
    match (parse_date(birth_date), parse_date(study_date)) {
        (Some(birth), Some(study)) if study >= birth => Some(Completed {
            months: completed_months(birth, study),
            days: u32::try_from((study - birth).whole_days()).unwrap_or(u32::MAX),
        }),
        _ => None,
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

    fn months(m: u32) -> Option<u32> {
        Some(m)
    }

    #[test]
    fn age_strings_in_every_unit() {
        let m = |s| parse_age_string(s).map(|a| a.months);
        assert_eq!(m("045Y"), months(540));
        assert_eq!(m("018M"), months(18));
        assert_eq!(m("052W"), months(11));
        assert_eq!(m("053W"), months(12));
        assert_eq!(
            parse_age_string("010D").map(|a| (a.months, a.days)),
            Some((0, 10))
        );
        for bad in ["", "45Y", "0045Y", "04 Y", "045X", "-45Y", "\u{e9}45Y"] {
            assert_eq!(parse_age_string(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn age_stated_else_computed_from_dates_else_unknown() {
        let y = |a: Age| a.completed().map(|c| c.months / 12);
        assert_eq!(y(patient_age("003Y", "19800101", "20250101")), Some(3));
        assert!(matches!(
            patient_age("003Y", "19800101", "20250101"),
            Age::Stated(_)
        ));
        assert_eq!(y(patient_age("", "19800301", "20250303")), Some(45));
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

    /// Birthdays by the calendar: on the day, not 365.25 days later; the day before, not
    /// yet; a birth on the 31st completes its month on a shorter month's last day, and a
    /// leap-day birth its year on 28 February.
    #[test]
    fn ages_are_completed_by_the_calendar() {
        let m = |birth, on| patient_age("", birth, on).completed().unwrap().months;
        assert_eq!(m("20230315", "20240315"), 12);
        assert_eq!(m("20230315", "20240314"), 11);
        assert_eq!(m("20250315", "20260315"), 12);
        assert_eq!(m("20200101", "20251231"), 71);
        assert_eq!(m("20200101", "20260101"), 72);
        assert_eq!(m("20250131", "20250228"), 1);
        assert_eq!(m("20250131", "20250227"), 0);
        assert_eq!(m("20200229", "20210228"), 12);
        assert_eq!(m("20250301", "20250301"), 0);
    }

    /// Dates at the ends of the calendar a header can hold give an age, never a panic.
    #[test]
    fn extreme_dates_give_an_age() {
        let m = |birth, on| patient_age("", birth, on).completed().map(|c| c.months);
        assert_eq!(m("00010101", "99991231"), Some(9998 * 12 + 11));
        assert_eq!(m("99991231", "99991231"), Some(0));
        assert_eq!(m("99991231", "00010101"), None);
    }

    /// A range is inclusive of the whole unit of each bound: "1–5 y" from the first
    /// birthday to the day before the sixth; "0.5 y" bounds count months.
    #[test]
    fn a_range_holds_whole_years_or_months() {
        let age = |birth, on| patient_age("", birth, on).completed().unwrap();
        let (lo, hi) = (Some(1.0), Some(5.0));
        assert!(age("20250315", "20260315").within(lo, hi));
        assert!(!age("20250315", "20260314").within(lo, hi));
        assert!(age("20200101", "20251231").within(lo, hi));
        assert!(!age("20200101", "20260101").within(lo, hi));
        let stated = |s| parse_age_string(s).unwrap();
        assert!(stated("005Y").within(lo, hi));
        assert!(stated("071M").within(lo, hi));
        assert!(!stated("072M").within(lo, hi));
        assert!(!stated("011M").within(lo, hi));
        assert!(stated("012M").within(lo, hi));
        assert!(stated("006M").within(Some(0.5), None));
        assert!(!stated("005M").within(Some(0.5), None));
        assert!(stated("006M").within(None, Some(0.5)));
        assert!(!stated("007M").within(None, Some(0.5)));
        assert!(stated("045Y").within(None, None));
    }

    #[test]
    fn ages_read_as_people_say_them() {
        let d = |s| parse_age_string(s).unwrap().describe();
        assert_eq!(d("045Y"), "45 y");
        assert_eq!(d("018M"), "18 mo");
        assert_eq!(d("001Y"), "12 mo");
        assert_eq!(d("003W"), "3 wk");
        assert_eq!(d("005D"), "5 d");
        assert_eq!(
            patient_age("", "20200101", "20251231")
                .completed()
                .unwrap()
                .describe(),
            "5 y"
        );
        for (s, back) in [
            ("045Y", "045Y"),
            ("018M", "018M"),
            ("001Y", "012M"),
            ("003W", "003W"),
            ("005D", "005D"),
        ] {
            assert_eq!(parse_age_string(s).unwrap().as_age_string(), back, "{s}");
        }
        assert_eq!(bound(1.0), "1");
        assert_eq!(bound(0.5), "0.5");
    }
}
