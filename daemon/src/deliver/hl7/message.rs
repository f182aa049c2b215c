//! The ORU^R01 (v2.5.1) message made from a [`Report`], its escaping rules, and the
//! DICOM → HL7 conversions of names and dates. `docs/hl7-interface.md` describes the
//! profile segment by segment. The message validates in strict HL7 v2.5.1 parsers: the
//! Study Instance UID travels in an OBX by default, or in a ZDS segment at the end of the
//! message where such parsers accept a Z segment.

use crate::config::StudyUidIn;
use crate::report::Finding;
use crate::report::Report;
use crate::site_secret::SiteSecret;

/// Field separator (MSH-1).
pub const FIELD_SEP: char = '|';
/// Encoding characters (MSH-2): component, repetition, escape, sub-component.
pub const ENCODING_CHARS: &str = "^~\\&";
/// Segment terminator.
pub const SEGMENT_END: char = '\r';
/// MSH-3 sending application.
pub const SENDING_APPLICATION: &str = "DULI";
/// Coding system of the codes this appliance defines (OBX-3, OBR-4): a local coding
/// system name of the form HL7 table 0396 reserves for them (`99zzz`).
pub const LOCAL_CODING_SYSTEM: &str = "99DULI";
/// OBX-3 of the Study Instance UID observation (DICOM PS3.16 `DCM` code).
pub const STUDY_UID_CODE: &str = "110180^Study Instance UID^DCM";

/// Characters of a message control id (MSH-10): the length HL7 v2.5.1 gives the field, so
/// a RIS that keeps only that much echoes it whole in MSA-2.
pub const CONTROL_ID_CHARS: usize = 20;
/// Characters of the filler order number's identifier (EI.1 of ORC-3/OBR-3): with
/// `^DULI` it stays within the 22 characters HL7 v2.5.1 gives those fields.
pub const FILLER_ORDER_CHARS: usize = 16;
/// Pseudonym domain of message control ids.
pub const CONTROL_ID_DOMAIN: &str = "hl7-control-id";
/// Pseudonym domain of filler order numbers.
pub const FILLER_ORDER_DOMAIN: &str = "hl7-filler-order";
/// Why a message whose PID-3 is empty is not sent: the RIS files results by patient.
pub const NO_PATIENT_ID: &str =
    "the study has no Patient ID (0010,0020) for the RIS to file it under";

/// HL7 v2.5.1 lengths of the components that carry DICOM text, in characters as sent
/// (escapes included, as strict parsers count them).
pub mod limits {
    /// OBR-4.5 (CE.5, alternate text): the Study Description.
    pub const ALTERNATE_TEXT: usize = 199;
    /// XPN.1 family name (FN.1 surname).
    pub const FAMILY_NAME: usize = 50;
    /// XPN.2 given name.
    pub const GIVEN_NAME: usize = 30;
    /// XPN.3 second and further given names.
    pub const MIDDLE_NAMES: usize = 30;
    /// XPN.4 suffix.
    pub const SUFFIX: usize = 20;
    /// XPN.5 prefix.
    pub const PREFIX: usize = 20;
    /// NTE-3 (FT) comment.
    pub const COMMENT: usize = 65_536;
    /// CX.4 HD.1 (namespace ID): the Issuer of Patient ID.
    pub const ASSIGNING_AUTHORITY: usize = 20;
}

/// The identifiers of one message that the site secret keys: nobody without the secret can
/// compute them from a study UID, and another box's messages never share them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageIds {
    /// MSH-10: one per report (study and version), so a resend carries the same one.
    pub control_id: String,
    /// EI.1 of ORC-3/OBR-3: one per study, so a corrected result names the order the RIS
    /// filed the first one under.
    pub filler_order: String,
}

impl MessageIds {
    /// The identifiers of the message of `report` sent by the box `device_id`.
    pub fn of(report: &Report, secret: &SiteSecret, device_id: &str) -> MessageIds {
        MessageIds {
            control_id: control_id_of(secret, device_id, &report.report_id),
            filler_order: filler_order_of(secret, &report.study.study_instance_uid),
        }
    }

    /// The identifiers of the message withdrawing `report`: its order, a control id of
    /// its own (the report's own was taken by the message that posted it, and a receiver
    /// drops a repeated one as a duplicate).
    pub fn withdrawal(report: &Report, secret: &SiteSecret, device_id: &str) -> MessageIds {
        let withdrawn = format!("{}/withdrawn", report.report_id);
        MessageIds {
            control_id: control_id_of(secret, device_id, &withdrawn),
            filler_order: filler_order_of(secret, &report.study.study_instance_uid),
        }
    }
}

/// MSH-10 of the report `report_id` sent by the box `device_id` (`device.device_id`,
/// which holds no `/`): the first [`CONTROL_ID_CHARS`] hex digits of the pseudonym of
/// `device_id/report_id` in [`CONTROL_ID_DOMAIN`] (80 bits), so two boxes of a site that
/// report the same study send different control ids (a RIS dropping repeated control ids
/// as duplicates keeps both).
pub fn control_id_of(secret: &SiteSecret, device_id: &str, report_id: &str) -> String {
    let mut id = secret.pseudonym(CONTROL_ID_DOMAIN, &format!("{device_id}/{report_id}"));
    id.truncate(CONTROL_ID_CHARS);
    id
}

/// The filler order number (EI.1) of the study `study_uid`: the first
/// [`FILLER_ORDER_CHARS`] hex digits of its pseudonym in [`FILLER_ORDER_DOMAIN`].
pub fn filler_order_of(secret: &SiteSecret, study_uid: &str) -> String {
    let mut id = secret.pseudonym(FILLER_ORDER_DOMAIN, study_uid);
    id.truncate(FILLER_ORDER_CHARS);
    id
}

/// Why an encoded message must not be sent, if it must not: a PID-3 (required) that is
/// empty ([`NO_PATIENT_ID`]).
pub fn unsendable(message: &str) -> Option<String> {
    let pid3 = message
        .split(SEGMENT_END)
        .find(|s| s.starts_with("PID|"))
        .map(|pid| pid.split(FIELD_SEP).nth(3).unwrap_or(""));
    match pid3 {
        Some(id) if !id.trim().is_empty() => None,
        _ => Some(NO_PATIENT_ID.to_string()),
    }
}

/// Who sends and who receives: the header fields that come from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Profile {
    /// MSH-4 sending facility: the site id.
    pub sending_facility: String,
    /// MSH-5 receiving application.
    pub receiving_application: String,
    /// MSH-6 receiving facility.
    pub receiving_facility: String,
    /// Where the Study Instance UID goes.
    pub study_uid_in: StudyUidIn,
}

/// Escapes text for one HL7 field component: the delimiters become `\F\ \S\ \R\ \E\ \T\`
/// and control characters (CR, LF, tab, MLLP framing bytes) become `\Xhh\`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '~' => out.push_str("\\R\\"),
            '\\' => out.push_str("\\E\\"),
            '&' => out.push_str("\\T\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\X{:02X}\\", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// [`escape`] of the longest start of `text` whose escaped form has at most `max`
/// characters: cut between characters, never inside an escape, so that a value from
/// DICOM (whose lengths are not HL7's) fits its HL7 component.
pub fn escape_within(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut len = 0;
    for c in text.chars() {
        let piece = escape(c.encode_utf8(&mut [0u8; 4]));
        let n = piece.chars().count();
        if len + n > max {
            break;
        }
        out.push_str(&piece);
        len += n;
    }
    out
}

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1).
    pub field: char,
    /// Component separator.
    pub component: char,
    /// Repetition separator.
    pub repetition: char,
    /// Escape character.
    pub escape: char,
    /// Sub-component separator.
    pub subcomponent: char,
}

impl Default for Delimiters {
    /// The standard `|^~\&`, the ones this appliance writes.
    fn default() -> Self {
        Delimiters {
            field: FIELD_SEP,
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
        }
    }
}

impl Delimiters {
    /// The delimiters declared by `field` (MSH-1) and the encoding characters (MSH-2);
    /// characters MSH-2 leaves out keep their standard value.
    pub fn declared(field: char, encoding: &str) -> Delimiters {
        let standard = Delimiters::default();
        let mut chars = encoding.chars();
        Delimiters {
            field,
            component: chars.next().unwrap_or(standard.component),
            repetition: chars.next().unwrap_or(standard.repetition),
            escape: chars.next().unwrap_or(standard.escape),
            subcomponent: chars.next().unwrap_or(standard.subcomponent),
        }
    }
}

/// Reverses [`escape`] (and the other standard escapes it does not produce, which are
/// dropped). Unknown or unterminated escapes are kept verbatim.
pub fn unescape(text: &str) -> String {
    unescape_with(text, &Delimiters::default())
}

/// [`unescape`] for a message that declared other delimiters. Works on whole characters
/// only (a received text may hold any UTF-8 anywhere, escapes included), never panics,
/// and its output is at most twice the length of its input.
pub fn unescape_with(text: &str, d: &Delimiters) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after)) = rest.split_once(d.escape) {
        out.push_str(before);
        let Some((seq, tail)) = after.split_once(d.escape) else {
            // unterminated: kept as it came
            out.push(d.escape);
            out.push_str(after);
            return out;
        };
        match seq {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "R" => out.push(d.repetition),
            "E" => out.push(d.escape),
            "T" => out.push(d.subcomponent),
            s if s.starts_with('H') || s.starts_with('N') || s.starts_with(".br") => {
                // highlighting and formatting: no text of their own
            }
            s => match s.strip_prefix('X').and_then(hex_bytes) {
                Some(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
                None => {
                    out.push(d.escape);
                    out.push_str(s);
                    out.push(d.escape);
                }
            },
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The bytes of a `\Xhhhh..\` escape's hex digits; `None` unless it is a non-empty, even
/// run of ASCII hex digits (any other character, multi-byte ones included, refuses it).
fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if digits.is_empty() || digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(*pair.first()?)? << 4 | nibble(*pair.get(1)?)?))
        .collect()
}

/// The value of one ASCII hex digit.
fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Converts a DICOM PN (`Family^Given^Middle^Prefix^Suffix`, up to three component groups
/// `alphabetic=ideographic=phonetic`) to an HL7 XPN (`Family^Given^Middle^Suffix^Prefix`),
/// each component escaped and cut to its HL7 v2.5.1 length ([`limits`]). A name of the
/// alphabetic group alone gives one XPN, as before; a name with an ideographic or phonetic
/// group gives one repetition per group that is not empty, each with its Name
/// Representation Code (XPN.8, table 4000: `A`, `I`, `P`), so a Japanese or Korean name
/// written in ideographs only still reaches PID-5.
pub fn dicom_name_to_xpn(pn: &str) -> String {
    let groups: Vec<&str> = pn.splitn(3, '=').collect();
    let components = |group: &str| -> Vec<String> {
        let parts: Vec<&str> = group.split('^').map(str::trim).collect();
        let get = |i: usize| parts.get(i).copied().unwrap_or("");
        let xpn = [
            (get(0), limits::FAMILY_NAME),
            (get(1), limits::GIVEN_NAME),
            (get(2), limits::MIDDLE_NAMES),
            (get(4), limits::SUFFIX),
            (get(3), limits::PREFIX),
        ];
        let last = xpn
            .iter()
            .rposition(|(c, _)| !c.is_empty())
            .map_or(0, |i| i + 1);
        xpn[..last]
            .iter()
            .map(|(c, max)| escape_within(c, *max))
            .collect()
    };
    let others = groups.iter().skip(1).any(|g| !components(g).is_empty());
    if !others {
        return components(groups.first().copied().unwrap_or("")).join("^");
    }
    groups
        .iter()
        .zip(["A", "I", "P"])
        .filter_map(|(group, code)| {
            let mut c = components(group);
            if c.is_empty() {
                return None;
            }
            c.resize(7, String::new());
            c.push(code.to_string());
            Some(c.join("^"))
        })
        .collect::<Vec<_>>()
        .join("~")
}

/// Converts a DICOM DA (`YYYYMMDD`, or the old `YYYY.MM.DD`) to an HL7 date: the same
/// digits ([`crate::clock::normalise_da`]). Anything that is not a plausible date gives an
/// empty string (the field is then left empty).
pub fn dicom_date_to_hl7(da: &str) -> String {
    crate::clock::normalise_da(da)
}

/// Converts a DICOM TM (`HH`, `HHMM`, `HHMMSS`, `HHMMSS.FFFFFF`, or the old `HH:MM:SS`)
/// to the time part of an HL7 DTM (`HH[MM[SS[.S[S[S[S]]]]]]`): the DICOM reading
/// ([`crate::clock::normalise_tm`]) with the fraction cut to 4 digits. Invalid input
/// gives "".
pub fn dicom_time_to_hl7(tm: &str) -> String {
    let mut t = crate::clock::normalise_tm(tm);
    if let Some(dot) = t.find('.') {
        t.truncate(dot + 5);
    }
    t
}

/// A DICOM DA + TM pair as an HL7 DTM (date only when the time is absent or invalid; empty
/// when the date is).
pub fn dicom_datetime_to_hl7(da: &str, tm: &str) -> String {
    let date = dicom_date_to_hl7(da);
    if date.is_empty() {
        return date;
    }
    date + &dicom_time_to_hl7(tm)
}

/// Unix seconds as an HL7 DTM in UTC (`YYYYMMDDHHMMSS+0000`).
pub fn unix_to_hl7(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => String::new(),
    }
}

/// DICOM Patient's Sex to HL7 administrative sex (table 0001).
fn sex_to_hl7(sex: &str) -> &'static str {
    match sex.trim().to_ascii_uppercase().as_str() {
        "M" => "M",
        "F" => "F",
        "O" => "O",
        "" => "",
        _ => "U",
    }
}

/// A finding's probability as OBX-5 shows it (4 decimals): never printed at or above its
/// threshold (OBX-7 `<t`) beside `N`, nor below it beside `A`.
fn shown(f: &crate::result::Finding) -> f64 {
    crate::result::shown(
        f64::from(f.probability),
        f64::from(f.threshold),
        f.positive,
        4,
    )
}

/// A probability or threshold as OBX-5/OBX-7 text: up to 4 decimals, no trailing zeros.
fn number(x: f64) -> String {
    if !x.is_finite() {
        return String::new();
    }
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// One segment under construction: fields are joined with `|`, trailing empties dropped.
struct Segment {
    fields: Vec<String>,
}

impl Segment {
    fn new(id: &str) -> Self {
        Segment {
            fields: vec![id.to_string()],
        }
    }

    /// Sets field `n` (1-based, as the standard numbers them) to already-encoded text.
    fn set(mut self, n: usize, value: impl Into<String>) -> Self {
        if self.fields.len() <= n {
            self.fields.resize(n + 1, String::new());
        }
        self.fields[n] = value.into();
        self
    }

    fn render(mut self) -> String {
        while self.fields.len() > 1 && self.fields.last().is_some_and(|f| f.is_empty()) {
            self.fields.pop();
        }
        self.fields.join("|")
    }
}

/// OBX-3 of a finding (CWE): the standard code first with the local code as the alternate
/// (`233604007^Pneumonia^SCT^PNEUMONIA^Pneumonia^99DULI`), or the local code alone.
fn observation_id(f: &Finding, local_scheme: &str) -> String {
    let local = format!(
        "{}^{}^{}",
        escape(&f.code),
        escape(&f.label),
        escape(local_scheme)
    );
    match &f.standard {
        Some(c) => format!(
            "{}^{}^{}^{local}",
            escape(&c.code),
            escape(&c.meaning),
            escape(&c.scheme)
        ),
        None => local,
    }
}

/// Renders the MSH segment. MSH-1 is the separator itself, so MSH-n is field n-1.
fn msh(profile: &Hl7Profile, report: &Report, control_id: &str, message_type: &str) -> String {
    let fields = [
        "MSH".to_string(),
        ENCODING_CHARS.to_string(),             // MSH-2
        SENDING_APPLICATION.to_string(),        // MSH-3
        escape(&profile.sending_facility),      // MSH-4
        escape(&profile.receiving_application), // MSH-5
        escape(&profile.receiving_facility),    // MSH-6
        unix_to_hl7(report.created_at),         // MSH-7
        String::new(),                          // MSH-8
        message_type.to_string(),               // MSH-9
        escape(control_id),                     // MSH-10
        "P".to_string(),                        // MSH-11
        "2.5.1".to_string(),                    // MSH-12
        String::new(),                          // MSH-13
        String::new(),                          // MSH-14
        String::new(),                          // MSH-15
        String::new(),                          // MSH-16
        String::new(),                          // MSH-17
        "UNICODE UTF-8".to_string(),            // MSH-18
    ];
    fields.join("|")
}

/// Builds the ORU^R01 message of a report: segments separated by CR, UTF-8 text, every
/// free-text value escaped and cut to its HL7 v2.5.1 length. MSH-10 and the filler order
/// number come from `ids`: the same report always gets the same message, so a resend
/// carries the same MSH-10, and every version of a study the same ORC-3/OBR-3.
pub fn oru_r01(report: &Report, profile: &Hl7Profile, ids: &MessageIds) -> String {
    encode_oru(report, profile, ids, Posted::Preliminary)
}

/// The ORU^R01 that withdraws `report`, a result sent for the patient its study named
/// then, after the study was given to another patient: the same order (filler order
/// number), the patient the report was sent for, every observation `W` (HL7 table 0085,
/// "post original as wrong, e.g. transmitted for wrong patient"), the order `C`
/// (corrected), a note saying so first, and a control id of its own
/// ([`MessageIds::withdrawal`]).
pub fn oru_r01_withdrawal(report: &Report, profile: &Hl7Profile, ids: &MessageIds) -> String {
    encode_oru(report, profile, ids, Posted::Withdrawn)
}

/// How a report is posted: as the preliminary result it is, or withdrawn as sent for the
/// wrong patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    Preliminary,
    Withdrawn,
}

impl Posted {
    /// OBR-25 (table 0123) and OBX-11 (table 0085).
    fn statuses(self) -> (&'static str, &'static str) {
        match self {
            Posted::Preliminary => (RESULT_STATUS, RESULT_STATUS),
            Posted::Withdrawn => ("C", "W"),
        }
    }
}

/// The note that opens a withdrawal (NTE-3).
pub const WITHDRAWN_NOTE: &str = "WITHDRAWN: this AI result was sent for the wrong patient \
     (the study was given to another patient); disregard it for this patient.";

fn encode_oru(report: &Report, profile: &Hl7Profile, ids: &MessageIds, posted: Posted) -> String {
    let times = Times {
        study: dicom_datetime_to_hl7(&report.study.study_date, &report.study.study_time),
        created: unix_to_hl7(report.created_at),
    };
    let (order_status, observation_status) = posted.statuses();
    let mut segments = vec![msh(profile, report, &ids.control_id, "ORU^R01^ORU_R01")];
    segments.extend(patient(report));
    segments.extend(order(report, ids, &times, order_status));
    let lead = (posted == Posted::Withdrawn).then_some(WITHDRAWN_NOTE);
    segments.extend(notes(report, lead));
    segments.push(
        Segment::new("TQ1")
            .set(1, "1")
            .set(9, if report.triage { "S" } else { "R" })
            .render(),
    );
    segments.extend(observations(report, profile, &times, observation_status));
    if profile.study_uid_in == StudyUidIn::Zds {
        segments.push(
            Segment::new("ZDS")
                .set(
                    1,
                    format!(
                        "{}^{}^Application^DICOM",
                        escape(&report.study.study_instance_uid),
                        SENDING_APPLICATION
                    ),
                )
                .render(),
        );
    }
    let mut out = segments.join("\r");
    out.push(SEGMENT_END);
    out
}

/// The times an ORU^R01 carries, in HL7 form.
struct Times {
    /// When the study was made (its Study Date and Time).
    study: String,
    /// When the report was made.
    created: String,
}

/// PID and PV1: the patient as the study names them, an unknown patient class.
fn patient(report: &Report) -> [String; 2] {
    let s = &report.study;
    [
        Segment::new("PID")
            .set(1, "1")
            .set(3, patient_identifier(s))
            .set(5, dicom_name_to_xpn(&s.patient_name))
            .set(7, dicom_date_to_hl7(&s.patient_birth_date))
            .set(8, sex_to_hl7(&s.patient_sex))
            .render(),
        Segment::new("PV1").set(1, "1").set(2, "U").render(),
    ]
}

/// PID-3: the Patient ID (CX.1) and, when the study has one that fits, its Issuer of
/// Patient ID as the assigning authority (CX.4). An issuer longer than HD.1 allows is left
/// out rather than cut: a cut issuer would name another domain.
fn patient_identifier(s: &crate::model::StudyRecord) -> String {
    let issuer = escape(&s.issuer_of_patient_id);
    if s.patient_id.is_empty()
        || issuer.is_empty()
        || issuer.chars().count() > limits::ASSIGNING_AUTHORITY
    {
        escape(&s.patient_id)
    } else {
        format!("{}^^^{issuer}", escape(&s.patient_id))
    }
}

/// ORC and OBR: the order by its accession number and our filler order number, the
/// service analysed, preliminary or corrected.
fn order(report: &Report, ids: &MessageIds, times: &Times, status: &str) -> [String; 2] {
    let s = &report.study;
    let accession = escape(&s.accession_number);
    let filler = format!("{}^{}", escape(&ids.filler_order), SENDING_APPLICATION);
    let service = format!(
        "DULI-CXR^Chest X-ray AI analysis^{LOCAL_CODING_SYSTEM}^^{}",
        escape_within(&s.study_description, limits::ALTERNATE_TEXT)
    );
    [
        Segment::new("ORC")
            .set(1, "RE")
            .set(2, accession.clone())
            .set(3, filler.clone())
            .set(5, "CM")
            .set(9, times.created.clone())
            .render(),
        Segment::new("OBR")
            .set(1, "1")
            .set(2, accession.clone())
            .set(3, filler)
            .set(4, service)
            .set(7, times.study.clone())
            .set(18, accession)
            .set(22, times.created.clone())
            .set(24, "RAD")
            .set(25, status)
            .render(),
    ]
}

/// NTE: `lead` (a withdrawal's note) when given, the AI disclaimer, then the report's
/// own notes, numbered in that order.
fn notes(report: &Report, lead: Option<&str>) -> Vec<String> {
    let disclaimer =
        "Preliminary result generated by an AI algorithm; not reviewed by a radiologist.";
    let own = report.notes();
    lead.into_iter()
        .map(str::to_string)
        .chain(std::iter::once(disclaimer.to_string()))
        .chain(own.iter().map(|n| escape_within(n, limits::COMMENT)))
        .enumerate()
        .map(|(i, text)| {
            Segment::new("NTE")
                .set(1, (i + 1).to_string())
                .set(2, "L")
                .set(3, text)
                .render()
        })
        .collect()
}

/// The result status of the order (OBR-25) and of each of its observations (OBX-11), which
/// must agree: `P` (preliminary) for every version. A later version (instances that
/// arrived after the first result) replaces the earlier one under the same filler order
/// number, but stays an unreviewed machine result: HL7 table 0085's `C` corrects a *final*
/// result, and a receiver that shows `C` as final would drop the preliminary banner.
const RESULT_STATUS: &str = "P";

/// OBX: one numeric observation per finding, the Study Instance UID when the profile puts
/// it there, and the model that made the findings.
fn observations(report: &Report, profile: &Hl7Profile, times: &Times, status: &str) -> Vec<String> {
    let mut segments = Vec::with_capacity(report.findings.len() + 2);
    for f in &report.findings {
        segments.push(
            Segment::new("OBX")
                .set(1, (segments.len() + 1).to_string())
                .set(2, "NM")
                .set(3, observation_id(f, &report.coding_scheme))
                .set(5, number(shown(f)))
                .set(7, format!("<{}", number(f64::from(f.threshold))))
                .set(8, if f.positive { "A" } else { "N" })
                .set(11, status)
                .set(14, times.study.clone())
                .set(19, times.created.clone())
                .render(),
        );
    }
    if profile.study_uid_in == StudyUidIn::Obx {
        segments.push(
            Segment::new("OBX")
                .set(1, (segments.len() + 1).to_string())
                .set(2, "ST")
                .set(3, STUDY_UID_CODE)
                .set(5, escape(&report.study.study_instance_uid))
                .set(11, status)
                .set(14, times.study.clone())
                .set(19, times.created.clone())
                .render(),
        );
    }
    segments.push(
        Segment::new("OBX")
            .set(1, (segments.len() + 1).to_string())
            .set(2, "ST")
            .set(3, format!("DULI-MODEL^AI model^{LOCAL_CODING_SYSTEM}"))
            .set(
                5,
                escape(&format!(
                    "{} {} {}",
                    report.model_name, report.model_version, report.model_precision
                )),
            )
            .set(11, status)
            .set(19, times.created.clone())
            .render(),
    );
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn profile() -> Hl7Profile {
        Hl7Profile {
            sending_facility: "hospital-a".into(),
            receiving_application: "RIS".into(),
            receiving_facility: "HOSP".into(),
            study_uid_in: StudyUidIn::Obx,
        }
    }

    /// The identifiers of the fixture's message.
    fn ids() -> MessageIds {
        MessageIds {
            control_id: "r-7f3a9c2e01".into(),
            filler_order: "f-3a9c2e01".into(),
        }
    }

    fn segment<'a>(msg: &'a str, id: &str) -> Vec<&'a str> {
        msg.split('\r')
            .find(|s| s.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} in {msg:?}"))
            .split('|')
            .collect()
    }

    #[test]
    fn escape_covers_every_delimiter_and_control_characters() {
        assert_eq!(escape("a|b^c~d\\e&f"), "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f");
        assert_eq!(escape("l1\r\nl2"), "l1\\X0D\\\\X0A\\l2");
        assert_eq!(escape("\u{0b}\u{1c}"), "\\X0B\\\\X1C\\");
        assert_eq!(escape("João"), "João");
        for s in ["a|b^c~d\\e&f", "l1\r\nl2", "plain", "\\", "João & Maria"] {
            assert_eq!(unescape(&escape(s)), s);
        }
        assert_eq!(unescape("trailing\\E"), "trailing\\E");
        assert_eq!(unescape("\\Xzz\\"), "\\Xzz\\");
    }

    #[test]
    fn names_and_dates_follow_the_conversions() {
        assert_eq!(
            dicom_name_to_xpn("Conceição^João^Maria^Dr.^Jr."),
            "Conceição^João^Maria^Jr.^Dr."
        );
        assert_eq!(dicom_name_to_xpn("Doe^John"), "Doe^John");
        // Several component groups: one repetition each, with its representation code.
        assert_eq!(
            dicom_name_to_xpn("Yamada^Tarou=山田^太郎=やまだ^たろう"),
            "Yamada^Tarou^^^^^^A~山田^太郎^^^^^^I~やまだ^たろう^^^^^^P"
        );
        assert_eq!(
            dicom_name_to_xpn("=洪^吉洞=홍^길동"),
            "洪^吉洞^^^^^^I~홍^길동^^^^^^P"
        );
        assert_eq!(dicom_name_to_xpn("Doe^John=="), "Doe^John");
        assert_eq!(dicom_name_to_xpn("O&Brien^A|B"), "O\\T\\Brien^A\\F\\B");
        assert_eq!(dicom_name_to_xpn(""), "");
        assert_eq!(dicom_date_to_hl7("19800215"), "19800215");
        assert_eq!(dicom_date_to_hl7("1980.02.15"), "19800215");
        assert_eq!(dicom_date_to_hl7("19801315"), "");
        assert_eq!(dicom_date_to_hl7("garbage"), "");
        assert_eq!(dicom_time_to_hl7("093015.123456"), "093015.1234");
        assert_eq!(dicom_time_to_hl7("09:30:15"), "093015");
        assert_eq!(dicom_time_to_hl7("0930"), "0930");
        assert_eq!(dicom_time_to_hl7("2561"), "");
        assert_eq!(dicom_datetime_to_hl7("20240131", ""), "20240131");
        assert_eq!(dicom_datetime_to_hl7("", "1200"), "");
        assert_eq!(unix_to_hl7(1_706_693_415), "20240131093015+0000");
    }

    #[test]
    fn not_applicable_and_caveat_are_notes_after_the_ai_statement() {
        let mut report = fixtures::report();
        report.findings.clear();
        report.not_applicable = Some("age 45 y outside the model's 1\u{2013}5 y".into());
        report.caveat = Some("patient age unknown | 1^5".into());
        let msg = oru_r01(&report, &profile(), &ids());
        let ntes: Vec<Vec<&str>> = msg
            .split('\r')
            .filter(|s| s.starts_with("NTE"))
            .map(|s| s.split('|').collect())
            .collect();
        assert_eq!(ntes.len(), 3);
        assert_eq!(ntes[1][1], "2");
        assert_eq!(
            ntes[1][3],
            "Not applicable: outside the model's intended use (age 45 y outside the model's 1\u{2013}5 y); not analysed."
        );
        assert_eq!(ntes[2][1], "3");
        assert_eq!(ntes[2][3], "Caveat: patient age unknown \\F\\ 1\\S\\5");
    }

    #[test]
    fn oru_r01_has_the_profiles_fields_byte_for_byte() {
        let report = fixtures::report();
        let msg = oru_r01(&report, &profile(), &ids());
        assert!(msg.ends_with('\r'));
        assert!(!msg.contains('\n'));
        let ids: Vec<&str> = msg
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| &s[..3])
            .collect();
        assert_eq!(
            ids,
            ["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "TQ1", "OBX", "OBX", "OBX", "OBX"]
        );
        let first = msg.split('\r').next().unwrap();
        assert_eq!(
            first,
            "MSH|^~\\&|DULI|hospital-a|RIS|HOSP|20240131093015+0000||ORU^R01^ORU_R01|r-7f3a9c2e01|P|2.5.1||||||UNICODE UTF-8"
        );
        let pid = segment(&msg, "PID");
        assert_eq!(pid[3], "PAT\\F\\001\\S\\X");
        assert_eq!(pid[5], "Conceição^João^Maria^Jr.^Dr.");
        assert_eq!(pid[7], "19800215");
        assert_eq!(pid[8], "M");
        let obr = segment(&msg, "OBR");
        assert_eq!(obr[2], "ACC\\T\\42");
        assert_eq!(obr[3], "f-3a9c2e01^DULI");
        assert_eq!(segment(&msg, "ORC")[3], "f-3a9c2e01^DULI");
        assert_eq!(obr[7], "20240131093015.1234");
        assert_eq!(obr[18], "ACC\\T\\42");
        assert_eq!(obr[25], "P");
        assert_eq!(segment(&msg, "TQ1")[9], "S");
        let obx: Vec<Vec<&str>> = msg
            .split('\r')
            .filter(|s| s.starts_with("OBX"))
            .map(|s| s.split('|').collect())
            .collect();
        assert_eq!(obx[0][2], "NM");
        assert_eq!(
            obx[0][3],
            "233604007^Pneumonia^SCT^PNEUMONIA^Pneumonia^99DULI"
        );
        assert_eq!(obx[0][5], "0.8735");
        assert_eq!(obx[0][7], "<0.5");
        assert_eq!(obx[0][8], "A");
        assert_eq!(obx[0][11], "P");
        assert_eq!(obx[1][5], "0.12");
        assert_eq!(obx[1][8], "N");
        assert_eq!(obx[1][3], "EFFUSION^Pleural effusion^99DULI");
        assert_eq!(obx[2][2], "ST");
        assert_eq!(obx[2][3], STUDY_UID_CODE);
        assert_eq!(obx[2][5], "1.2.826.0.1.3680043.8.498.1");
        assert_eq!(obx[3][2], "ST");
        assert_eq!(obx[3][5], "pneumonia-xception 1.0.0 f32");
        assert!(!msg.contains("ZDS"));
    }

    #[test]
    fn zds_mode_puts_the_study_uid_in_a_zds_at_the_end_instead_of_an_obx() {
        let report = fixtures::report();
        let mut p = profile();
        p.study_uid_in = StudyUidIn::Zds;
        let msg = oru_r01(&report, &p, &ids());
        let ids: Vec<&str> = msg
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| &s[..3])
            .collect();
        assert_eq!(
            ids,
            ["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "TQ1", "OBX", "OBX", "OBX", "ZDS"]
        );
        assert_eq!(
            segment(&msg, "ZDS")[1],
            "1.2.826.0.1.3680043.8.498.1^DULI^Application^DICOM"
        );
        assert!(!msg.contains(STUDY_UID_CODE));
    }

    #[test]
    fn a_later_version_stays_preliminary_and_routine_without_triage() {
        let mut report = fixtures::report();
        report.version = 2;
        report.triage = false;
        let msg = oru_r01(&report, &profile(), &ids());
        assert_eq!(segment(&msg, "OBR")[25], "P");
        // Each observation says what the order says.
        let obx: Vec<Vec<String>> = msg
            .split('\r')
            .filter(|l| l.starts_with("OBX|"))
            .map(|l| l.split('|').map(String::from).collect())
            .collect();
        assert!(
            !obx.is_empty() && obx.iter().all(|o| o[11] == "P"),
            "{obx:?}"
        );
        assert_eq!(segment(&msg, "TQ1")[9], "R");
    }

    /// A withdrawal names the patient and order the result was posted under, marks every
    /// observation `W` and the order `C`, says so first, and has a control id of its own.
    #[test]
    fn a_withdrawal_posts_every_observation_as_wrong() {
        let report = fixtures::report();
        let secret = SiteSecret::from_bytes(&[5u8; 32]);
        let posted = MessageIds::of(&report, &secret, "edge-01");
        let ids = MessageIds::withdrawal(&report, &secret, "edge-01");
        assert_eq!(ids.filler_order, posted.filler_order);
        assert_ne!(ids.control_id, posted.control_id);
        // Another box of the site posting the same report uses other control ids, the
        // same order.
        let other_box = MessageIds::of(&report, &secret, "edge-02");
        assert_eq!(other_box.filler_order, posted.filler_order);
        assert_ne!(other_box.control_id, posted.control_id);
        let other_withdrawal = MessageIds::withdrawal(&report, &secret, "edge-02");
        assert_ne!(other_withdrawal.control_id, ids.control_id);
        let msg = oru_r01_withdrawal(&report, &profile(), &ids);
        assert_eq!(segment(&msg, "PID")[3], escape(&report.study.patient_id));
        assert_eq!(segment(&msg, "OBR")[25], "C");
        let obx: Vec<&str> = msg.split('\r').filter(|l| l.starts_with("OBX|")).collect();
        assert!(!obx.is_empty());
        assert!(
            obx.iter().all(|o| o.split('|').nth(11) == Some("W")),
            "{obx:?}"
        );
        let nte = segment(&msg, "NTE");
        assert_eq!((nte[1], nte[3]), ("1", WITHDRAWN_NOTE));
        let numbers: Vec<&str> = msg
            .split('\r')
            .filter(|l| l.starts_with("NTE|"))
            .filter_map(|l| l.split('|').nth(1))
            .collect();
        let expected: Vec<String> = (1..=numbers.len()).map(|i| i.to_string()).collect();
        assert_eq!(numbers, expected);
    }

    /// PID-3 names the Issuer of Patient ID as assigning authority (CX.4) when the study
    /// has one that fits; never beside an empty Patient ID, never cut.
    #[test]
    fn the_issuer_of_patient_id_is_the_assigning_authority() {
        let mut report = fixtures::report();
        report.study.patient_id = "12345".into();
        report.study.issuer_of_patient_id = "HOSP_A".into();
        let pid3 = |r: &Report| {
            let msg = oru_r01(r, &profile(), &ids());
            segment(&msg, "PID")[3].to_string()
        };
        assert_eq!(pid3(&report), "12345^^^HOSP_A");
        // Delimiters in the issuer are escaped, never taken as structure.
        report.study.issuer_of_patient_id = "A|B^C&D".into();
        assert_eq!(pid3(&report), "12345^^^A\\F\\B\\S\\C\\T\\D");
        report.study.issuer_of_patient_id = "X".repeat(21);
        assert_eq!(pid3(&report), "12345");
        report.study.issuer_of_patient_id = "HOSP_A".into();
        report.study.patient_id = String::new();
        assert_eq!(pid3(&report), "");
    }

    #[test]
    fn a_probability_beside_its_threshold_is_shown_on_its_decision_s_side() {
        let mut report = fixtures::report();
        report.findings[0].probability = 0.49996;
        report.findings[0].threshold = 0.5;
        report.findings[0].positive = false;
        report.findings[1].probability = 0.35;
        report.findings[1].threshold = 0.35;
        report.findings[1].positive = true;
        let msg = oru_r01(&report, &profile(), &ids());
        let obx: Vec<Vec<&str>> = msg
            .split('\r')
            .filter(|l| l.starts_with("OBX|") && l.contains("|NM|"))
            .map(|l| l.split('|').collect())
            .collect();
        assert_eq!((obx[0][5], obx[0][7], obx[0][8]), ("0.4999", "<0.5", "N"));
        assert_eq!((obx[1][5], obx[1][7], obx[1][8]), ("0.35", "<0.35", "A"));
    }

    #[test]
    fn hostile_text_cannot_break_framing_or_structure() {
        let mut report = fixtures::report();
        report.study.patient_name = "A\rMSH|x\u{1c}\r^B".into();
        report.study.study_description = "\u{0b}|||".into();
        let msg = oru_r01(&report, &profile(), &ids());
        assert_eq!(msg.matches('\r').count(), 11);
        assert!(!msg.contains('\u{1c}') && !msg.contains('\u{0b}'));
        assert_eq!(segment(&msg, "PID").len(), 9);
    }

    #[test]
    fn escape_within_cuts_between_characters_and_never_inside_an_escape() {
        assert_eq!(escape_within("abc", 10), "abc");
        assert_eq!(escape_within("abc", 2), "ab");
        assert_eq!(escape_within("ab&c", 3), "ab");
        assert_eq!(escape_within("ab&c", 5), "ab\\T\\");
        assert_eq!(escape_within("éé|", 4), "éé");
        assert_eq!(escape_within("a\rb", 4), "a");
        assert_eq!(escape_within("a\rb", 6), "a\\X0D\\");
        assert_eq!(escape_within("", 3), "");
        for max in 0..40 {
            let cut = escape_within("Tórax & Abdómen | AP^PA ~ 2\\3", max);
            assert!(cut.chars().count() <= max, "{cut}");
            assert!("Tórax & Abdómen | AP^PA ~ 2\\3".starts_with(&unescape(&cut)));
        }
    }

    #[test]
    fn long_dicom_text_is_cut_to_the_hl7_lengths() {
        let mut report = fixtures::report();
        report.study.study_description = "Tórax&".repeat(50);
        report.study.patient_name = format!("{}^{}", "F".repeat(64), "G".repeat(64));
        let msg = oru_r01(&report, &profile(), &ids());
        let obr4 = segment(&msg, "OBR")[4];
        let text = obr4.split('^').nth(4).unwrap();
        assert!(text.chars().count() <= limits::ALTERNATE_TEXT, "{text}");
        assert!(text.ends_with("\\T\\") || text.ends_with('x'), "{text}");
        let pid5: Vec<&str> = segment(&msg, "PID")[5].split('^').collect();
        assert_eq!(pid5[0].len(), limits::FAMILY_NAME);
        assert_eq!(pid5[1].len(), limits::GIVEN_NAME);
    }

    #[test]
    fn a_message_without_a_patient_id_is_unsendable() {
        let report = fixtures::report();
        assert_eq!(unsendable(&oru_r01(&report, &profile(), &ids())), None);
        for empty in ["", "   "] {
            let mut r = fixtures::report();
            r.study.patient_id = empty.into();
            let msg = oru_r01(&r, &profile(), &ids());
            assert_eq!(unsendable(&msg).as_deref(), Some(NO_PATIENT_ID), "{msg}");
        }
        assert_eq!(
            unsendable("MSH|^~\\&\rPV1|1|U\r").as_deref(),
            Some(NO_PATIENT_ID)
        );
    }
}
