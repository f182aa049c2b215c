//! The console over real HTTPS on loopback: the role table, logins and their throttling,
//! cookie flags, CSRF refusal, the audit chain (and a tampered record found by
//! `duli audit verify`), the worklist with live events, the study page's data, previews,
//! heatmaps and feedback, TLS protocol checks with `openssl`/`curl`, manual uploads
//! (PNG, DICOM, broken, too large; analysed by the model and never delivered), the C-ECHO
//! test against DCMTK `storescp` and a closed port, and the outbox with a dead letter from
//! an MLLP listener answering AR re-queued by a technician.

mod common;

use common::*;
use duli::console::roles::{Access, Endpoint, Role, ROUTES};
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

fn daemon_with_users() -> Daemon {
    let d = Daemon::start();
    for (name, role) in [
        ("rita", "radiologist"),
        ("theo", "technician"),
        ("ada", "admin"),
    ] {
        d.add_user(name, role, PW);
    }
    d
}

fn user_of(role: Role) -> &'static str {
    match role {
        Role::Radiologist => "rita",
        Role::Technician => "theo",
        Role::Admin => "ada",
    }
}

fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|s| match s {
            "{uid}" => "1.2.3.4",
            "{sop}" => "1.2.3.4.5",
            "{name}" => "nobody",
            "*" => "console.js",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Only the status of a request whose body may never end (server-sent events).
fn status_only(addr: std::net::SocketAddr, path: &str, cookie: &str) -> u16 {
    let mut s = tls_connect(addr, Duration::from_secs(10)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A page of another origin on the same site (another host of the hospital's domain)
/// cannot make a logged-in user's browser search studies or export the audit trail: its
/// requests say `Sec-Fetch-Site: same-site` and are refused before the session is used,
/// leaving no search in the user's name; the console's own page and typed addresses work,
/// and every answer forbids loading by other origins.
#[test]
fn requests_from_pages_of_other_origins_are_refused() {
    let d = daemon_with_users();
    let rita = d.login("rita", PW);
    let ask = |site: Option<&str>| {
        let mut headers = vec![("Cookie", rita.cookie.as_str())];
        if let Some(site) = site {
            headers.push(("Sec-Fetch-Site", site));
        }
        https_request(
            rita.addr,
            "GET",
            "/api/v1/studies?q=crosssitecanary",
            &headers,
            None,
            Duration::from_secs(10),
        )
        .unwrap()
    };
    for site in ["same-site", "cross-site"] {
        assert_eq!(ask(Some(site)).status, 403, "{site}");
    }
    let own = ask(Some("same-origin"));
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.headers["cross-origin-resource-policy"], "same-origin");
    assert_eq!(ask(Some("none")).status, 200);
    assert_eq!(ask(None).status, 200);
    let admin = d.login("ada", PW);
    let records = admin.get("/api/v1/audit?limit=1000").json()["records"].clone();
    let searches = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|t| t.contains("crosssitecanary"))
        })
        .count();
    assert!(searches <= 3, "{searches} searches audited: {records}");
}

#[test]
fn every_route_of_the_role_table_answers_401_without_session_and_403_for_wrong_roles() {
    let d = daemon_with_users();
    let addr = d.console_addr();
    let sessions: Vec<(Role, ConsoleSession)> = Role::ALL
        .iter()
        .map(|r| (*r, d.login(user_of(*r), PW)))
        .collect();
    let mut checked = 0;
    for route in ROUTES {
        let path = concrete(route.pattern);
        if route.access == Access::Public {
            if route.endpoint != Endpoint::Login {
                let r = https_request(
                    addr,
                    route.method,
                    &path,
                    &[],
                    None,
                    Duration::from_secs(10),
                )
                .unwrap();
                assert_eq!(r.status, 200, "{route:?} is public");
            }
            continue;
        }
        if route.access == Access::Setup {
            // Public while no admin exists; this box has one: setup is closed (409).
            let r = https_request(
                addr,
                route.method,
                &path,
                &[],
                Some(("application/json", br#"{"code":"x","password":"y"}"#)),
                Duration::from_secs(10),
            )
            .unwrap();
            let want = if route.method == "GET" { 200 } else { 409 };
            assert_eq!(r.status, want, "{route:?} once provisioned: {}", r.text());
            continue;
        }
        // No session: 401, whatever the method.
        let r = https_request(
            addr,
            route.method,
            &path,
            &[],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 401, "{route:?} without a session: {}", r.text());
        assert_eq!(r.json()["error"], "unauthenticated");
        // A cookie that is not a session: 401 too.
        let bogus = format!("__Host-duli_session={}", "ab".repeat(32));
        let r = https_request(
            addr,
            route.method,
            &path,
            &[("Cookie", &bogus)],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 401, "{route:?} with a made-up token");
        for (role, s) in &sessions {
            let status = if route.endpoint == Endpoint::Events && route.access.allows(*role) {
                status_only(addr, &path, &s.cookie)
            } else if route.endpoint == Endpoint::Logout && route.access.allows(*role) {
                // Log out a separate session, not the one the walk uses.
                let extra = d.login(user_of(*role), PW);
                extra
                    .request(route.method, &path, Some(&serde_json::json!({})), true)
                    .status
            } else {
                let body = (route.method != "GET").then(|| serde_json::json!({}));
                s.request(route.method, &path, body.as_ref(), true).status
            };
            if route.access.allows(*role) {
                assert!(
                    status != 401 && status != 403,
                    "{route:?} as {role}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{route:?} as {role}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3 * 15, "walked {checked} route/role pairs");
}

/// Login throttling outlives a restart of the daemon: a client that has to wait keeps
/// waiting after the daemon was killed and started again, and the right password then
/// works once the wait is over.
#[test]
fn login_throttling_survives_a_restart_of_the_daemon() {
    let mut d = daemon_with_users();
    let addr = d.console_addr();
    let fail = || {
        let r = console_login_raw(d.console_addr(), "theo", "not the password");
        assert_eq!(r.status, 401, "{}", r.text());
    };
    for _ in 0..5 {
        fail();
    }
    // Beyond the free failures each wait doubles: 1 s, 2 s, then 4 s.
    for wait in [1, 2] {
        let r = console_login_raw(addr, "theo", PW);
        assert_eq!(r.status, 429, "{}", r.text());
        std::thread::sleep(Duration::from_secs(wait));
        fail();
    }
    let r = console_login_raw(addr, "theo", PW);
    assert_eq!(r.status, 429, "{}", r.text());
    let before: u64 = r.headers["retry-after"].parse().unwrap();
    assert!((3..=4).contains(&before), "retry after {before}");
    // The index writes what it holds to disk within half a second.
    std::thread::sleep(Duration::from_millis(700));
    d.restart();
    let addr = d.console_addr();
    let r = console_login_raw(addr, "theo", PW);
    assert_eq!(r.status, 429, "after the restart: {}", r.text());
    let after: u64 = r.headers["retry-after"].parse().unwrap();
    assert!((1..=before).contains(&after), "retry after {after}");
    std::thread::sleep(Duration::from_secs(after));
    d.login("theo", PW);
}

#[test]
fn login_cookies_csrf_logout_and_throttling() {
    let d = daemon_with_users();
    let addr = d.console_addr();

    // Wrong password: 401, and no cookie.
    let r = console_login_raw(addr, "rita", "wrong password!!");
    assert_eq!(r.status, 401);
    assert!(!r.headers.contains_key("set-cookie"));

    // Right password: both cookies with the security attributes.
    let s = d.login("rita", PW);
    let cookies = s.login.headers["set-cookie"].clone();
    let session_cookie = cookies
        .lines()
        .find(|l| l.starts_with("__Host-duli_session="))
        .unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session_cookie.contains(attr), "{attr} in {session_cookie}");
    }
    let token = session_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("__Host-duli_session=");
    assert_eq!(token.len(), 64, "256-bit token as hex");
    let csrf_cookie = cookies
        .lines()
        .find(|l| l.starts_with("__Host-duli_csrf="))
        .unwrap();
    assert!(csrf_cookie.contains("Secure") && !csrf_cookie.contains("HttpOnly"));
    // Browser-session cookies: gone when the browser closes (the server ends the session
    // after its idle and absolute lifetimes).
    for cookie in [session_cookie, csrf_cookie] {
        assert!(
            !cookie.contains("Max-Age") && !cookie.contains("Expires"),
            "{cookie}"
        );
    }
    assert!(s.login.headers["strict-transport-security"].contains("max-age"));
    assert_eq!(s.get("/api/v1/me").json()["role"], "radiologist");

    // State-changing requests without or with a wrong CSRF token are refused.
    let fb = serde_json::json!({"agree": true});
    let r = s.request("POST", "/api/v1/studies/1.2.3/feedback", Some(&fb), false);
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("csrf")));
    let wrong = ConsoleSession {
        csrf: "0".repeat(64),
        ..s.clone()
    };
    assert_eq!(
        wrong
            .send("POST", "/api/v1/studies/1.2.3/feedback", &fb)
            .status,
        403
    );
    // With the token it reaches the handler (no such study).
    assert_eq!(
        s.send("POST", "/api/v1/studies/1.2.3/feedback", &fb).status,
        404
    );
    // Logout needs the token too, then the session is gone.
    assert_eq!(s.request("POST", "/api/v1/logout", None, false).status, 403);
    let r = s.send("POST", "/api/v1/logout", &serde_json::json!({}));
    assert_eq!(r.status, 200);
    assert!(r.headers["set-cookie"].contains("Max-Age=0"));
    assert_eq!(s.get("/api/v1/me").status, 401);

    // Five failures on one account, then even the right password waits.
    for _ in 0..5 {
        assert_eq!(
            console_login_raw(addr, "theo", "not the password").status,
            401
        );
    }
    let r = console_login_raw(addr, "theo", PW);
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.headers["retry-after"].parse().unwrap();
    assert!((1..=2).contains(&retry), "retry after {retry}");
    // Another account from the same address is not throttled yet.
    d.login("ada", PW);
    // After the wait, the right password works and resets the account.
    std::thread::sleep(Duration::from_secs(retry));
    d.login("theo", PW);

    // The audit trail has every login, failure and logout, and verifies.
    let admin = d.login("ada", PW);
    let audit = admin.get("/api/v1/audit?limit=1000").json();
    let records = audit["records"].as_array().unwrap();
    let count = |action: &str, actor: &str| {
        records
            .iter()
            .filter(|r| r["action"] == action && r["actor"] == actor)
            .count()
    };
    assert_eq!(count("login_failed", "rita"), 1);
    assert_eq!(count("login_failed", "theo"), 6);
    assert_eq!(count("logout", "rita"), 1);
    assert!(count("login", "theo") >= 1);
    assert_eq!(
        records
            .iter()
            .filter(|r| r["action"] == "user_change"
                && r["actor"].as_str().is_some_and(|a| a.starts_with("cli:")))
            .count(),
        3,
        "duli user add is audited, naming who ran it"
    );
    assert!(records
        .iter()
        .all(|r| r["source"] == "127.0.0.1" || r["source"] == "local"));
    let v = admin.get("/api/v1/audit/verify").json();
    assert_eq!(v["intact"], true, "{v}");
    // The newest records first (the audit page), and paging back from them.
    let newest = admin.get("/api/v1/audit?before=latest&limit=3").json();
    // The head the answer names may be this read's own record, written after the page.
    let head = newest["head"]["seq"].as_u64().unwrap();
    let seqs = |page: &serde_json::Value| -> Vec<u64> {
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    };
    let page = seqs(&newest);
    assert_eq!(page.len(), 3, "{newest}");
    assert!(page[2] + 1 >= head && page[2] <= head, "{newest}");
    assert_eq!([page[0] + 1, page[1] + 1], [page[1], page[2]], "{newest}");
    let older = admin
        .get(&format!("/api/v1/audit?before={}&limit=3", page[0]))
        .json();
    assert_eq!(seqs(&older), [page[0] - 3, page[0] - 2, page[0] - 1]);
    let first = admin.get("/api/v1/audit?before=2&limit=1000").json();
    assert_eq!(seqs(&first), [0, 1]);
    assert_eq!(admin.get("/api/v1/audit?before=soon").status, 400);

    // Export: JSON and RFC 5424 lines with DICOM audit messages.
    let json = admin.get("/api/v1/audit/export?format=json");
    assert_eq!(json.status, 200);
    assert!(json.json().as_array().unwrap().len() >= records.len());
    let syslog = admin.get("/api/v1/audit/export?format=syslog").text();
    let first = syslog.lines().next().unwrap();
    assert!(first.starts_with("<85>1 "), "{first}");
    assert!(first.contains(" duli - DICOM+RFC3881 [duli-chain@32473 seq=\"0\""));
    assert!(syslog.contains("<84>1 ") && syslog.contains("csd-code=\"110114\""));
    assert!(syslog.lines().all(|l| l.ends_with("</AuditMessage>")));
}

#[test]
fn tampered_audit_record_is_found_by_duli_audit_verify() {
    let mut d = daemon_with_users();
    let _ = console_login_raw(d.console_addr(), "rita", "wrong password!!");
    d.login("rita", PW);
    let out = run(
        &mut d.command(&["audit", "verify"]),
        Duration::from_secs(30),
    );
    out.assert_success("audit verify through the daemon");
    assert!(out.stdout.contains("intact: 5 record(s)"), "{}", out.stdout);
    assert!(d.terminate(Duration::from_secs(30)).is_some());

    // Change the actor of record 2 directly in the index.
    {
        let db = sled::open(d.data_dir().join("index")).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let raw = tree.get(2u64.to_be_bytes()).unwrap().unwrap();
        let mut rec: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        rec["actor"] = "mallory".into();
        tree.insert(2u64.to_be_bytes(), serde_json::to_vec(&rec).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let out = run(
        &mut d.command(&["audit", "verify"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.stdout.contains("BROKEN at record 2"),
        "{}",
        out.combined()
    );
}

/// Reads server-sent events until `want` returns true for one (event name, data).
fn wait_for_event(
    reader: &mut impl BufRead,
    deadline: Instant,
    want: impl Fn(&str, &serde_json::Value) -> bool,
) -> bool {
    let mut event = String::new();
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => panic!("event stream: {e}"),
        }
        let l = line.trim_end();
        if let Some(e) = l.strip_prefix("event:") {
            event = e.trim().to_string();
        } else if let Some(data) = l.strip_prefix("data:") {
            let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap_or_default();
            if want(&event, &v) {
                return true;
            }
        }
    }
    false
}

#[test]
fn worklist_live_events_study_preview_heatmap_and_feedback() {
    let Some(files) = sample_dicoms("explicit-le") else {
        return;
    };
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    let mut d = daemon_with_users();
    let s = d.login("rita", PW);

    // Subscribe to live events before anything arrives.
    let mut stream = tls_connect(d.console_addr(), Duration::from_secs(2)).unwrap();
    write!(
        stream,
        "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
        s.cookie
    )
    .unwrap();
    let mut events = BufReader::new(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    assert!(wait_for_event(&mut events, deadline, |e, _| e == "ready"));

    let file = &files[0];
    d.storescu("MODALITY", &[], std::slice::from_ref(file))
        .unwrap()
        .assert_success("storescu");
    let mut uid = String::new();
    assert!(
        wait_for_event(&mut events, deadline, |e, v| {
            e == "study" && v["kind"] == "arrived"
        }),
        "no arrival event"
    );
    assert!(wait_for_event(&mut events, deadline, |e, v| {
        e == "study" && v["kind"] == "state" && v["state"] == "complete"
    }));

    let list = s.get("/api/v1/studies").json();
    assert_eq!(list["total"], 1, "{list}");
    let row = &list["studies"][0];
    uid.push_str(row["study_uid"].as_str().unwrap());
    assert!(!row["patient_id"].as_str().unwrap().is_empty());
    // Complete, and handed to inference (off in this test, so it waits as queued).
    assert!(
        row["state"] == "complete" || row["state"] == "queued",
        "{row}"
    );
    assert_eq!(row["triage"], serde_json::Value::Null);
    // Search: a hit and a miss; a search is audited as a query.
    let pid = row["patient_id"].as_str().unwrap().to_string();
    assert_eq!(
        s.get(&format!("/api/v1/studies?q={pid}")).json()["total"],
        1
    );
    assert_eq!(
        s.get("/api/v1/studies?q=no-such-patient").json()["total"],
        0
    );
    assert_eq!(s.get("/api/v1/studies?state=done").json()["total"], 0);

    // Study detail with its instance; the preview is a 16-bit grayscale PNG.
    let detail = s.get(&format!("/api/v1/studies/{uid}"));
    assert_eq!(detail.status, 200);
    let detail = detail.json();
    assert_eq!(detail["result"], serde_json::Value::Null);
    // The page gets what it shows of the study record, not the whole record.
    let mut shown: Vec<&str> = detail["study"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    shown.sort_unstable();
    assert_eq!(
        shown,
        [
            "accession_number",
            "first_received",
            "patient_id",
            "patient_name",
            "study_description"
        ]
    );
    let inst = &detail["instances"][0];
    let png = s.get(inst["preview"].as_str().unwrap());
    assert_eq!(png.status, 200);
    assert_eq!(png.headers["content-type"], "image/png");
    assert_eq!(&png.body[1..4], b"PNG");
    assert_eq!((png.body[24], png.body[25]), (16, 0), "16-bit grayscale");
    let info = s.get(inst["preview_info"].as_str().unwrap()).json();
    assert!(info["width"].as_u64().unwrap() <= 1280);
    assert!(info["window_width"].as_f64().unwrap() > 0.0);
    let w = u32::from_be_bytes(png.body[16..20].try_into().unwrap());
    assert_eq!(w as u64, info["width"].as_u64().unwrap());
    // Rendered once: the cached file is served again.
    let again = s.get(inst["preview"].as_str().unwrap());
    assert_eq!(again.body, png.body);
    // Reading-room PCs are shared: no image of a patient is kept by the browser.
    for r in [&png, &again] {
        assert_eq!(r.headers["cache-control"], "no-store", "preview");
    }

    // A result and a heatmap recorded by the analysis stage (written here while the
    // daemon is stopped, as that stage would in the store).
    assert!(d.terminate(Duration::from_secs(30)).is_some());
    {
        let heat_dir = d.data_dir().join("heatmaps");
        std::fs::create_dir_all(&heat_dir).unwrap();
        let img = image::RgbaImage::from_pixel(8, 8, image::Rgba([255, 0, 0, 128]));
        img.save(heat_dir.join("h.png")).unwrap();
        let sop = detail["instances"][0]["sop_instance_uid"]
            .as_str()
            .unwrap()
            .to_string();
        record_result(
            d.data_dir(),
            &uid,
            &sop,
            "1.0",
            &[
                ("PNEUMONIA", "233604007", 0.93),
                ("EFFUSION", "60046008", 0.12),
            ],
            "heatmaps/h.png",
        );
    }
    d.restart();
    let s = d.login("rita", PW);
    let row = &s.get("/api/v1/studies").json()["studies"][0];
    assert_eq!(row["triage"], true);
    assert_eq!(row["top_finding"]["label"], "PNEUMONIA");
    assert_eq!(s.get("/api/v1/studies?urgent=1").json()["total"], 1);
    let detail = s.get(&format!("/api/v1/studies/{uid}")).json();
    assert_eq!(detail["result"]["model"]["name"], "pneumonia-xception");
    assert_eq!(detail["result"]["findings"][0]["probability"], 0.93);
    let heat = s.get(detail["heatmap"].as_str().unwrap());
    assert_eq!((heat.status, &heat.body[1..4]), (200, &b"PNG"[..]));
    assert_eq!(heat.headers["cache-control"], "no-store", "heatmap");

    // The finding of a feedback reaches the cloud: it must name one of the model's
    // labels, never free text.
    for finding in ["John Smith has pneumonia", "CARDIOMEGALY"] {
        let r = s.send(
            "POST",
            &format!("/api/v1/studies/{uid}/feedback"),
            &serde_json::json!({"agree": false, "finding": finding}),
        );
        assert_eq!(r.status, 400, "{finding}: {}", r.text());
    }
    // Feedback is stored, shown and audited.
    let r = s.send(
        "POST",
        &format!("/api/v1/studies/{uid}/feedback"),
        &serde_json::json!({"agree": false, "comment": "consolidation is atelectasis", "finding": "PNEUMONIA"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let detail = s.get(&format!("/api/v1/studies/{uid}")).json();
    assert_eq!(detail["feedback"][0]["agree"], false);
    assert_eq!(detail["feedback"][0]["user"], "rita");
    // Bounded: at most 20 records per user and study (each is stored, audited and queued
    // for the cloud), then 429 and nothing stored.
    for i in 1..20 {
        let r = s.send(
            "POST",
            &format!("/api/v1/studies/{uid}/feedback"),
            &serde_json::json!({"agree": i % 2 == 0}),
        );
        assert_eq!(r.status, 201, "{i}: {}", r.text());
    }
    let r = s.send(
        "POST",
        &format!("/api/v1/studies/{uid}/feedback"),
        &serde_json::json!({"agree": true}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("per user and study"), "{}", r.text());
    let detail = s.get(&format!("/api/v1/studies/{uid}")).json();
    assert_eq!(detail["feedback_total"], 20);
    assert_eq!(detail["feedback"].as_array().unwrap().len(), 20);

    let admin = d.login("ada", PW);
    let records = admin.get("/api/v1/audit?limit=1000").json()["records"].clone();
    let has =
        |action: &str| {
            records.as_array().unwrap().iter().any(|r| {
                r["action"] == action && r["actor"] == "rita" && r["object"] == uid.as_str()
            })
        };
    assert!(has("view") && has("feedback"), "{records}");
    assert!(records
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "query" && r["detail"].as_str().unwrap().contains(&pid)));
    assert_eq!(admin.get("/api/v1/audit/verify").json()["intact"], true);
}

#[test]
fn admin_manages_users_and_sessions_end_with_role_changes() {
    let d = daemon_with_users();
    let admin = d.login("ada", PW);
    let r = admin.send(
        "PUT",
        "/api/v1/users/nora",
        &serde_json::json!({"role": "radiologist", "password": "another long password"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let nora = d.login("nora", "another long password");
    assert_eq!(nora.get("/api/v1/studies").status, 200);
    // A role change ends her sessions.
    let r = admin.send(
        "PUT",
        "/api/v1/users/nora",
        &serde_json::json!({"role": "technician"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(nora.get("/api/v1/me").status, 401);
    let nora = d.login("nora", "another long password");
    assert_eq!(nora.get("/api/v1/studies").status, 403);
    assert_eq!(nora.get("/api/v1/system").status, 200);
    // The last admin cannot remove itself; a short password is refused.
    assert_eq!(
        admin
            .send("DELETE", "/api/v1/users/ada", &serde_json::json!({}))
            .status,
        409
    );
    assert_eq!(
        admin
            .send(
                "PUT",
                "/api/v1/users/x",
                &serde_json::json!({"role": "admin", "password": "short"})
            )
            .status,
        400
    );
    assert_eq!(
        admin
            .send("DELETE", "/api/v1/users/nora", &serde_json::json!({}))
            .status,
        200
    );
    assert_eq!(
        console_login_raw(d.console_addr(), "nora", "another long password").status,
        401
    );
    let users = admin.get("/api/v1/users").json();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ada", "rita", "theo"]);
    assert!(
        !users.to_string().contains("salt"),
        "hashes never leave the box"
    );
    // `duli user add` refuses an existing name and bad roles.
    let mut cmd = d.command(&["user", "add", "rita", "--role", "admin"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PW}\n").as_bytes())
        .unwrap();
    let out = tool_output(child.wait_with_output().unwrap());
    assert!(
        !out.success() && out.combined().contains("exists"),
        "{}",
        out.combined()
    );
    let out = run(
        &mut d.command(&["user", "add", "z", "--role", "boss"]),
        Duration::from_secs(30),
    );
    assert!(!out.success() && out.combined().contains("unknown role"));
}

/// Logins that race a change to the account: while four clients keep logging in as nora,
/// an admin disables her (then, in a second round, demotes her). No session made by those
/// logins may outlive the change: each is refused afterwards, or carries the new role.
#[test]
fn no_session_from_a_login_racing_an_account_change_outlives_it() {
    let d = daemon_with_users();
    let admin = d.login("ada", PW);
    let addr = d.console_addr();
    for (round, change, allowed_role) in [
        (0, serde_json::json!({"disabled": true}), None),
        (
            1,
            serde_json::json!({"role": "technician"}),
            Some("technician"),
        ),
    ] {
        let name = format!("nora{round}");
        let pw = "another long password";
        let r = admin.send(
            "PUT",
            &format!("/api/v1/users/{name}"),
            &serde_json::json!({"role": "admin", "password": pw}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let sessions: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut kept = Vec::new();
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let r = console_login_raw(addr, &name, pw);
                            if r.status != 200 {
                                continue;
                            }
                            let cookie = r.headers.get("set-cookie").cloned().unwrap_or_default();
                            if let Some(c) = cookie
                                .lines()
                                .filter_map(|l| l.split(';').next())
                                .find(|c| c.starts_with("__Host-duli_session="))
                            {
                                kept.push(c.to_string());
                            }
                        }
                        kept
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(700));
            let r = admin.send("PUT", &format!("/api/v1/users/{name}"), &change);
            assert_eq!(r.status, 200, "{}", r.text());
            std::thread::sleep(Duration::from_millis(700));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert!(!sessions.is_empty(), "no login of {name} succeeded");
        for cookie in &sessions {
            let r = https_request(
                addr,
                "GET",
                "/api/v1/me",
                &[("Cookie", cookie.as_str())],
                None,
                Duration::from_secs(30),
            )
            .unwrap();
            match allowed_role {
                None => assert_eq!(r.status, 401, "{name} disabled, yet: {}", r.text()),
                Some(role) => assert!(
                    r.status == 401 || r.json()["role"] == role,
                    "{name} demoted to {role}, yet: {} {}",
                    r.status,
                    r.text()
                ),
            }
        }
        eprintln!(
            "{name}: {} sessions made around the change, none outlived it",
            sessions.len()
        );
    }
}

/// Wrong passwords sent all at once count as they arrive, not as their checks end: of 30
/// parallel attempts on one account, at most its 5 free ones reach the password check.
#[test]
fn parallel_wrong_passwords_are_throttled_like_sequential_ones() {
    let d = daemon_with_users();
    let addr = d.console_addr();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let all: Vec<_> = (0..30)
            .map(|i| s.spawn(move || console_login_raw(addr, "rita", &format!("wrong {i}")).status))
            .collect();
        all.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + throttled, 30, "{statuses:?}");
    assert!(
        checked <= 5,
        "{checked} of 30 parallel guesses were checked: {statuses:?}"
    );
}

/// Every access to patient data leaves an audit record, and so does every refused
/// request of a logged-in user, once per user, object and window: a preview or heatmap
/// fetched without the study page, a worklist listing (each filter its own), a page of the
/// audit trail (each page its own), a route the role may not use and a change without the
/// CSRF token. Repeats within the window add nothing.
#[test]
fn previews_listings_and_refusals_are_audited_once_per_window() {
    let Some(files) = sample_dicoms("explicit-le") else {
        return;
    };
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    let d = daemon_with_users();
    d.storescu("MODALITY", &[], std::slice::from_ref(&files[0]))
        .unwrap()
        .assert_success("storescu");
    let (rita, theo, ada) = (d.login("rita", PW), d.login("theo", PW), d.login("ada", PW));
    let deadline = Instant::now() + Duration::from_secs(30);
    let study = loop {
        let list = rita.get("/api/v1/studies").json();
        if let Some(uid) = list["studies"][0]["study_uid"].as_str() {
            break uid.to_string();
        }
        assert!(Instant::now() < deadline, "the study never arrived");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sop = d
        .command(&["instances", &study])
        .output()
        .map(|o| {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v[0]["sop_instance_uid"].as_str().unwrap().to_string()
        })
        .unwrap();
    let preview = format!("/api/v1/studies/{study}/instances/{sop}/preview");
    for _ in 0..3 {
        assert_eq!(rita.get(&preview).status, 200);
        assert_eq!(rita.get("/api/v1/studies").status, 200);
        // Another filter is another listing: recorded once too, not covered by the first.
        assert_eq!(
            rita.get("/api/v1/studies?state=done&limit=1000").status,
            200
        );
        assert_eq!(theo.get("/api/v1/studies").status, 403);
        assert_eq!(
            rita.request("DELETE", "/api/v1/users/theo", None, false)
                .status,
            403
        );
        let feedback = format!("/api/v1/studies/{study}/feedback");
        let body = serde_json::json!({"agree": true});
        assert_eq!(
            rita.request("POST", &feedback, Some(&body), false).status,
            403
        );
    }
    // Reading the trail is audited once per page and window: the same page twice and
    // another page leave two records.
    for page in ["/api/v1/audit?limit=1000", "/api/v1/audit?from=1&limit=5"] {
        assert_eq!(ada.get(page).status, 200);
    }
    let audit = ada.get("/api/v1/audit?limit=1000").json();
    let records = audit["records"].as_array().unwrap();
    let count = |actor: &str, action: &str, text: &str| {
        records
            .iter()
            .filter(|r| {
                r["actor"] == actor
                    && r["action"] == action
                    && (r["object"].as_str().unwrap_or("").contains(text)
                        || r["detail"].as_str().unwrap_or("").contains(text))
            })
            .count()
    };
    assert_eq!(count("rita", "view", "preview of instance"), 1, "{audit}");
    assert_eq!(count("rita", "query", "listed"), 2, "{audit}");
    assert_eq!(
        count("rita", "query", "state done, all priorities, limit 1000"),
        1,
        "{audit}"
    );
    assert_eq!(count("ada", "view", "audit trail"), 2, "{audit}");
    assert_eq!(count("ada", "view", "records from #1"), 1, "{audit}");
    assert_eq!(
        count("theo", "other", "the role may not use it"),
        1,
        "{audit}"
    );
    assert_eq!(
        count("rita", "other", "the role may not use it"),
        1,
        "{audit}"
    );
    assert_eq!(count("rita", "other", "no valid CSRF token"), 1, "{audit}");
    let refused = records
        .iter()
        .find(|r| r["actor"] == "theo" && r["action"] == "other")
        .unwrap();
    assert_eq!(refused["success"], false, "{refused}");

    // One patient's records (an accounting of the accesses to their data): rita's preview
    // of the study names its patient, and a search by the Patient ID finds it, reading the
    // whole trail of this new box; only admins search, a bad ID is refused, and each search
    // is itself in the trail.
    let pid = rita.get("/api/v1/studies").json()["studies"][0]["patient_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !pid.is_empty()
            && pid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "{pid}"
    );
    let found = ada.get(&format!("/api/v1/audit?patient={pid}")).json();
    let records = found["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["actor"] == "rita"
            && r["detail"]
                .as_str()
                .unwrap_or("")
                .contains("preview of instance")),
        "{found}"
    );
    assert!(
        records.iter().all(
            |r| r["patients"].as_array().is_some_and(|p| p.iter().any(|p| p
                .as_str()
                .unwrap()
                .split('^')
                .next()
                == Some(&pid)))
        ),
        "{found}"
    );
    assert_eq!(
        (&found["search"]["patient"], &found["search"]["complete"]),
        (&serde_json::json!(pid), &serde_json::json!(true)),
        "{found}"
    );
    let none = ada.get("/api/v1/audit?patient=NOBODY-9").json();
    assert_eq!(none["records"].as_array().unwrap().len(), 0, "{none}");
    assert_eq!(
        rita.get(&format!("/api/v1/audit?patient={pid}")).status,
        403
    );
    assert_eq!(ada.get("/api/v1/audit?patient=%0A").status, 400);
    let audit = ada.get("/api/v1/audit?limit=1000").json();
    let searched = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["actor"] == "ada"
                && r["detail"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("searched for the records of patient ")
        })
        .count();
    assert_eq!(searched, 2, "{audit}");
    // Lying or oversized values: refused, or read from the newest record back.
    let long = "X".repeat(129);
    assert_eq!(
        ada.get(&format!("/api/v1/audit?patient={long}")).status,
        400
    );
    assert_eq!(
        ada.get(&format!("/api/v1/audit?patient={pid}&before=-1"))
            .status,
        400
    );
    let far = ada
        .get(&format!(
            "/api/v1/audit?patient={pid}&before=18446744073709551615&limit=0"
        ))
        .json();
    let head = far["head"]["seq"].as_u64().unwrap();
    assert!(far["records"].as_array().unwrap().len() <= 1, "{far}");
    assert!(
        far["search"]["searched_from"].as_u64().unwrap() <= head + 1,
        "{far}"
    );
}

/// One user cannot take every live event stream: beyond `max_event_streams_per_user`
/// (here 2) their next stream is refused with 429, while another user still gets one.
#[test]
fn event_streams_are_capped_per_user() {
    let d = Daemon::builder()
        .config("console", "max_event_streams_per_user", "2")
        .start();
    for (name, role) in [("rita", "radiologist"), ("rosa", "radiologist")] {
        d.add_user(name, role, PW);
    }
    let (rita, rosa) = (d.login("rita", PW), d.login("rosa", PW));
    let open = |cookie: &str| {
        let mut s = tls_connect(d.console_addr(), Duration::from_secs(10)).unwrap();
        write!(
            s,
            "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, reader)
    };
    let held: Vec<_> = (0..2).map(|_| open(&rita.cookie)).collect();
    assert!(held.iter().all(|(status, _)| *status == 200));
    assert_eq!(open(&rita.cookie).0, 429, "a third stream of one user");
    assert_eq!(open(&rosa.cookie).0, 200, "another user still gets one");
    drop(held);
}

#[test]
fn users_can_be_added_without_a_running_daemon() {
    let root = temp_dir("offline-user");
    let dir = root.path().join("data");
    let mut cmd = std::process::Command::new(Daemon::binary());
    let args = ["user", "add", "offline", "--role", "admin"];
    cmd.args(args)
        .arg("--config")
        .arg(box_command_config(&args, root.path()).unwrap())
        .env("DULI_DEVICE__DATA_DIR", &dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PW}\n").as_bytes())
        .unwrap();
    let out = tool_output(child.wait_with_output().unwrap());
    out.assert_success("duli user add without a daemon");
    let d = Daemon::builder().data_dir(&dir).start();
    let s = d.login("offline", PW);
    let audit = s.get("/api/v1/audit").json();
    assert_eq!(audit["records"][0]["action"], "user_change");
    assert_eq!(audit["records"][0]["object"], "offline");
    assert_eq!(s.get("/api/v1/audit/verify").json()["intact"], true);
}

/// On a terminal, `duli user add` prompts twice with echo off: the password typed is
/// never shown, and the account works. Driven through a pseudo-terminal (Python's `pty`).
#[test]
fn a_password_typed_on_a_terminal_is_not_echoed() {
    const SCRIPT: &str = r#"
import os, pty, select, sys, time
binary, data, password, config = sys.argv[1:5]
pid, fd = pty.fork()
if pid == 0:
    os.environ["DULI_DEVICE__DATA_DIR"] = data
    os.execv(binary, [binary, "user", "add", "tty-user", "--role", "admin", "--config", config])
seen = b""
def read_until(marker, limit=20.0):
    global seen
    end = time.time() + limit
    while marker not in seen and time.time() < end:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen += chunk
read_until(b"Password")
os.write(fd, password.encode() + b"\n")
read_until(b"Repeat")
os.write(fd, password.encode() + b"\n")
read_until(b"tty-user")
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let Some(python) = python_with(&["pty"]) else {
        return;
    };
    let root = temp_dir("tty-user");
    let dir = root.path().join("data");
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(Daemon::binary())
        .arg(&dir)
        .arg(PW)
        .arg(box_command_config(&["user"], root.path()).unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "duli user add on a terminal: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Password") && text.contains("Repeat it"),
        "{text}"
    );
    assert!(!text.contains(PW), "the password was echoed: {text}");
    assert!(text.contains("\"created\": \"tty-user\""), "{text}");
    let d = Daemon::builder().data_dir(&dir).start();
    d.login("tty-user", PW);
}

#[test]
fn tls_only_1_2_and_up_and_the_certificate_is_the_logged_one() {
    let d = Daemon::start();
    let port = d.console_port.to_string();
    let connect = format!("127.0.0.1:{port}");
    // The fingerprint in the log is the served certificate's.
    let log = d.log();
    let fp = log
        .split("SHA-256 ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint logged:\n{log}"))
        .to_string();
    let pem = std::fs::read_to_string(d.data_dir().join("console/cert.pem")).unwrap();
    let body = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(fp, hex.join(":"));

    // Plain HTTP gets no HTTP answer.
    if let Ok(r) = http_get(d.console_addr(), "/healthz") {
        panic!("plain HTTP answered {}", r.status);
    }
    if which("openssl").is_none() {
        return skip("openssl absent");
    }
    let s_client = |args: &[&str]| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-connect", &connect, "-servername", "localhost"])
            .args(args)
            .stdin(std::process::Stdio::null());
        run(&mut cmd, Duration::from_secs(30))
    };
    // TLS 1.1 offered at a security level that really offers it: the server ends the
    // handshake with an alert (rustls answers handshake_failure: no TLS 1.1 suite of its
    // own matches), while the same client settings with TLS 1.2 connect.
    let out = s_client(&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!out.success(), "{}", out.combined());
    let text = out.combined();
    assert!(
        text.contains("alert protocol version") || text.contains("alert handshake failure"),
        "expected a TLS alert from the server: {text}"
    );
    assert!(text.contains("Cipher is (NONE)"), "{text}");
    let out = s_client(&["-tls1_2", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(
        out.combined().contains("Protocol  : TLSv1.2"),
        "{}",
        out.combined()
    );
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(&[flag]);
        assert!(
            out.combined().contains(&format!("Protocol  : {name}"))
                || out.combined().contains(&format!("New, {name}")),
            "{flag}: {}",
            out.combined()
        );
    }
    if which("curl").is_some() {
        let out = run(
            std::process::Command::new("curl")
                .args(["-skS", &format!("https://127.0.0.1:{port}/healthz")]),
            Duration::from_secs(30),
        );
        assert!(out.stdout.contains("\"status\""), "{}", out.combined());
        let out = run(
            std::process::Command::new("curl")
                .args(["-sS", &format!("http://127.0.0.1:{port}/healthz")]),
            Duration::from_secs(30),
        );
        assert!(!out.success(), "curl over plain HTTP: {}", out.combined());
    }
}

#[test]
fn healthz_says_inference_waits_and_the_system_page_says_for_what() {
    // The test daemon's model is a path that does not exist.
    let d = daemon_with_users();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let health = loop {
        let r = https_get(d.console_addr(), "/healthz").expect("/healthz");
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if v["status"] == "degraded" || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(health["status"], "degraded", "{health}");
    // Without a login only the state: the reason names a path on the box.
    assert_eq!(health["inference"], "waiting for model", "{health}");
    assert!(
        !String::from_utf8_lossy(&https_get(d.console_addr(), "/healthz").unwrap().body)
            .contains("inference-off-in-this-test"),
        "{health}"
    );
    let theo = d.login("theo", PW);
    let sys: serde_json::Value = serde_json::from_slice(&theo.get("/api/v1/system").body).unwrap();
    let why = sys["model"]["state"].as_str().unwrap_or_default();
    assert!(why.starts_with("waiting for model: "), "{sys}");
    assert!(why.contains("inference-off-in-this-test"), "{sys}");
    assert!(
        d.log().contains("inference is waiting for its model"),
        "{}",
        d.log()
    );
}

/// A login from a browser that still holds another user's session (a shared reading-room
/// PC where the last user did not log out) ends that session on the box, not only in the
/// browser, and the trail records it as that user's logout.
#[test]
fn a_login_ends_the_session_the_browser_held() {
    let d = daemon_with_users();
    let rita = d.login("rita", PW);
    let body = serde_json::json!({"username": "theo", "password": PW}).to_string();
    let r = https_request(
        d.console_addr(),
        "POST",
        "/api/v1/login",
        &[("Cookie", &rita.cookie)],
        Some(("application/json", body.as_bytes())),
        Duration::from_secs(30),
    )
    .expect("login request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        rita.get("/api/v1/me").status,
        401,
        "rita's session lives on"
    );
    let admin = d.login("ada", PW);
    let audit = admin.get("/api/v1/audit?limit=100").json();
    let records = audit["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["action"] == "logout"
            && r["actor"] == "rita"
            && r["detail"] == "ended by a new login in the same browser"),
        "{audit}"
    );
}

/// `POST /api/v1/uploads?name=NAME` with the file's bytes as the body.
fn upload(s: &ConsoleSession, name: &str, content_type: &str, bytes: &[u8]) -> HttpResponse {
    https_request(
        s.addr,
        "POST",
        &format!("/api/v1/uploads?name={name}"),
        &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)],
        Some((content_type, bytes)),
        Duration::from_secs(60),
    )
    .expect("upload request")
}

/// The stored Part 10 file of `sop` under the data directory.
fn stored_file(dir: &std::path::Path, sop: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = stored_file(&p, sop) {
                return Some(f);
            }
        } else if p.to_string_lossy().contains(sop) {
            return Some(p);
        }
    }
    None
}

/// Waits until the worklist shows `uid` in one of `states`; returns its row.
fn wait_for_study(s: &ConsoleSession, uid: &str, states: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = s.get("/api/v1/studies").json();
        let row = list["studies"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["study_uid"] == uid).cloned());
        if let Some(row) = &row {
            if states.iter().any(|st| row["state"] == *st) {
                return row.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "study {uid} not {states:?}: {row:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each upload becomes a study analysed in the queue of received studies: one user may
/// start at most 60 an hour (counted before the body is read, whatever it holds), so
/// uploads cannot crowd out the modalities' studies.
#[test]
fn uploads_per_user_are_limited_per_hour() {
    let d = daemon_with_users();
    let rita = d.login("rita", PW);
    for i in 0..60 {
        let r = upload(&rita, "junk.png", "image/png", b"not an image");
        assert_eq!(r.status, 400, "{i}: {}", r.text());
    }
    let r = upload(&rita, "junk.png", "image/png", b"not an image");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("uploads an hour"), "{}", r.text());
    // Another user is not held back.
    let theo = d.login("theo", PW);
    let r = upload(&theo, "junk.png", "image/png", b"not an image");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn uploads_become_non_patient_studies_that_complete_like_received_ones() {
    let Some(shared) = samples_dir() else {
        return;
    };
    let d = daemon_with_users();
    let rita = d.login("rita", PW);
    let png = std::fs::read(shared.join("png/PNEUMONIA_03.png")).unwrap();

    // A PNG from a radiologist: a Secondary Capture marked as a chest radiograph.
    let r = upload(&rita, "PNEUMONIA_03.png", "image/png", &png);
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json();
    let uid = up["study_uid"].as_str().unwrap().to_string();
    assert_eq!(up["format"], "png");
    assert_eq!(up["sop_class_uid"], "1.2.840.10008.5.1.4.1.1.7");
    // Completed by the assembly stage (inference is off here, so it waits as queued).
    let row = wait_for_study(&rita, &uid, &["complete", "queued"]);
    let pid = row["patient_id"].as_str().unwrap();
    assert!(pid.starts_with("UPLOAD-") && pid.len() > 7, "{row}");
    assert_eq!(row["patient_name"], "UPLOAD^PNEUMONIA_03.png");
    let detail = rita.get(&format!("/api/v1/studies/{uid}")).json();
    let inst = &detail["instances"][0];
    assert_eq!(inst["sop_class_uid"], "1.2.840.10008.5.1.4.1.1.7");
    assert_eq!(inst["body_part"], "CHEST");
    assert_eq!(inst["view_position"], "PA");
    let png_preview = rita.get(inst["preview"].as_str().unwrap());
    assert_eq!(png_preview.status, 200);
    let file = stored_file(d.data_dir(), inst["sop_instance_uid"].as_str().unwrap()).unwrap();
    let attr = |t| dicom_attr(&file, t);
    use dicom_dictionary_std::tags;
    assert_eq!(
        attr(tags::DERIVATION_DESCRIPTION),
        "DULI upload: chest radiograph"
    );
    assert_eq!(attr(tags::PHOTOMETRIC_INTERPRETATION), "MONOCHROME2");
    assert_eq!(attr(tags::BITS_STORED), "8");
    assert_eq!(attr(tags::MODALITY), "DX");
    let size = image::image_dimensions(shared.join("png/PNEUMONIA_03.png")).unwrap();
    assert_eq!(
        (attr(tags::COLUMNS), attr(tags::ROWS)),
        (size.0.to_string(), size.1.to_string())
    );

    // A broken file: 400 with the reason.
    let r = upload(&rita, "broken.png", "image/png", &png[..200]);
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("the PNG image cannot be read"),
        "{}",
        r.text()
    );
    let r = upload(&rita, "notes.txt", "text/plain", b"not an image at all");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not a DICOM Part 10 file, PNG or JPEG"));

    // A technician may upload a DICOM file: its image kept, its identity replaced (the
    // worklist shows the upload, never the patient it came from).
    if let Some(files) = sample_dicoms("explicit-le") {
        let theo = d.login("theo", PW);
        let bytes = std::fs::read(&files[0]).unwrap();
        let r = upload(&theo, "x.dcm", "application/dicom", &bytes);
        assert_eq!(r.status, 201, "{}", r.text());
        let up = r.json();
        let orig = |t| dicom_attr(&files[0], t);
        assert_eq!(up["format"], "dicom");
        assert_ne!(up["study_uid"], orig(tags::STUDY_INSTANCE_UID).as_str());
        let row = wait_for_study(
            &rita,
            up["study_uid"].as_str().unwrap(),
            &["complete", "queued"],
        );
        assert!(row["patient_id"].as_str().unwrap().starts_with("UPLOAD-"));
        assert_ne!(row["patient_id"], orig(tags::PATIENT_ID).as_str());
        assert_eq!(row["patient_name"], "UPLOAD^x.dcm", "{row}");
    }

    // An admin may not upload; nor may anyone without a session.
    let ada = d.login("ada", PW);
    let small = &png[..1000];
    assert_eq!(upload(&ada, "a.png", "image/png", small).status, 403);
    let anonymous = ConsoleSession {
        cookie: String::new(),
        ..rita.clone()
    };
    assert_eq!(upload(&anonymous, "a.png", "image/png", small).status, 401);

    // Over the limit: refused from the declared length, before any body is read.
    let mut s = tls_connect(d.console_addr(), Duration::from_secs(10)).unwrap();
    write!(
        s,
        "POST /api/v1/uploads?name=big.png HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nX-CSRF-Token: {}\r\n\
         Content-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        rita.cookie,
        rita.csrf,
        65 * 1024 * 1024
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut raw);
    let r = parse_http_response(&raw).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("at most 64 MB"), "{}", r.text());

    // Every upload is in the audit trail, refusals as failures.
    let records = ada.get("/api/v1/audit?limit=1000").json()["records"].clone();
    let imports: Vec<&serde_json::Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "import")
        .collect();
    assert!(
        imports
            .iter()
            .any(|r| r["actor"] == "rita" && r["object"] == uid.as_str() && r["success"] == true),
        "{records}"
    );
    assert_eq!(
        imports.iter().filter(|r| r["success"] == false).count(),
        2,
        "{records}"
    );
}

#[test]
fn technicians_echo_every_dicom_peer_and_see_which_fail() {
    if which("storescp").is_none() {
        return skip("storescp absent");
    }
    let pacs_port = free_port();
    let dir = temp_dir("echo-storescp");
    let mut cmd = dcmtk("storescp").unwrap();
    cmd.args(["-aet", "STORESCP", "-od", dir.path().to_str().unwrap()])
        .arg(pacs_port.to_string());
    let mut scp =
        Background::spawn("storescp", &mut cmd, &dir.path().join("storescp.log")).unwrap();
    scp.wait_for_port(loopback(pacs_port), Duration::from_secs(20))
        .unwrap();
    let closed = free_port();
    let d = Daemon::builder()
        .config(
            "pacs",
            "destinations",
            &format!(
                "[{{name = \"pacs\", ae_title = \"STORESCP\", host = \"127.0.0.1\", port = {pacs_port}}}, \
                 {{name = \"gone\", ae_title = \"GONE\", host = \"127.0.0.1\", port = {closed}}}]"
            ),
        )
        .start();
    for (name, role) in [("theo", "technician"), ("rita", "radiologist")] {
        d.add_user(name, role, PW);
    }
    let rita = d.login("rita", PW);
    assert_eq!(
        rita.send("POST", "/api/v1/system/echo", &serde_json::json!({}))
            .status,
        403
    );
    let theo = d.login("theo", PW);
    let r = theo.send("POST", "/api/v1/system/echo", &serde_json::json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    let own = row("this box");
    assert_eq!(own["status"], "success", "{own}");
    assert_eq!(own["port"], d.dicom_port);
    let pacs = row("pacs");
    assert_eq!(pacs["status"], "success", "{pacs}");
    assert!(pacs["rtt_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(pacs["error"], serde_json::Value::Null);
    let gone = row("gone");
    assert_eq!(gone["status"], "failed");
    assert_eq!(gone["rtt_ms"], serde_json::Value::Null);
    let err = gone["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("GONE@127.0.0.1:{closed}")) && err.to_lowercase().contains("refused"),
        "{err}"
    );
}

/// What the test RIS says with its refusals: as a real one may, it names the patient.
const RIS_WORDS: &str = "patient UPLOAD-X SMITH^JOHN not found";

/// An MLLP listener on `port` that refuses (AR) every message until `stop`, with
/// [`RIS_WORDS`]; returns how many it refused.
fn mllp_refuser(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use duli::deliver::hl7::{ack, mllp};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut refused = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut dec = mllp::Decoder::default();
            let mut buf = [0u8; 8192];
            while !stop.load(Ordering::Relaxed) {
                match std::io::Read::read(&mut conn, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => dec.push(&buf[..n]),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        continue
                    }
                    Err(_) => break,
                }
                while let Ok(Some(frame)) = dec.next_frame() {
                    let text = String::from_utf8_lossy(&frame).to_string();
                    let control = text
                        .split('\r')
                        .next()
                        .unwrap_or("")
                        .split('|')
                        .nth(9)
                        .unwrap_or("");
                    let reply = ack::build_ack(ack::AckCode::AR, control, "ACK1", RIS_WORDS);
                    let _ = conn.write_all(&mllp::encode(reply.as_bytes()));
                    refused += 1;
                }
            }
        }
        refused
    })
}

fn outbox_entry(theo: &ConsoleSession) -> serde_json::Value {
    let view = theo.get("/api/v1/outbox").json();
    let hl7 = view["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dest"] == "hl7")
        .cloned()
        .unwrap_or_else(|| panic!("no hl7 destination: {view}"));
    hl7["entries"][0].clone()
}

fn wait_for_entry(
    theo: &ConsoleSession,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = outbox_entry(theo);
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "{what}: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn outbox_shows_waiting_entries_and_technicians_requeue_dead_letters() {
    use duli::store::outbox::{Destination, Kind, NewEntry, OutboxLimits, Payload};
    // A report waiting for the RIS, put in the outbox before the daemon starts.
    let root = temp_dir("outbox-console");
    let data = root.path().join("data");
    {
        let store = duli::store::Store::open(&data).unwrap();
        let outbox = store.outbox(OutboxLimits::default()).unwrap();
        outbox
            .enqueue(&[NewEntry {
                dest: Destination::Hl7,
                kind: Kind::Report,
                report_id: "report-1".into(),
                study_instance_uid: String::new(),
                payload: Payload::Hl7 {
                    message: "MSH|^~\\&|DULI|SITE|RIS|HOSP|20260101120000||ORU^R01^ORU_R01|CTRL-1|P|2.5.1\rPID|1||UPLOAD-X".into(),
                },
            }])
            .unwrap();
        store.flush_blocking().unwrap();
    }
    // The RIS port is closed at first.
    let ris = free_port();
    let d = Daemon::builder()
        .data_dir(&data)
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &ris.to_string())
        .config("hl7", "max_rejections", "1")
        .start();
    for (name, role) in [
        ("theo", "technician"),
        ("ada", "admin"),
        ("rita", "radiologist"),
    ] {
        d.add_user(name, role, PW);
    }
    let theo = d.login("theo", PW);
    let e = wait_for_entry(&theo, "a failed attempt", |e| {
        e["attempts"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(e["state"], "retrying", "{e}");
    assert_eq!(e["kind"], "report");
    assert_eq!(e["report_id"], "report-1");
    assert!(!e["last_error"].as_str().unwrap().is_empty(), "{e}");
    assert!(e["age_secs"].as_f64().unwrap() >= 0.0);
    assert!(
        e.get("payload").is_none(),
        "payloads stay out of the listing"
    );
    let view = theo.get("/api/v1/outbox").json();
    let hl7 = &view["destinations"][0];
    assert_eq!(
        (hl7["dest"].as_str(), hl7["stats"]["retrying"].as_u64()),
        (Some("hl7"), Some(1))
    );
    assert!(
        hl7["stats"]["failed_total"].as_u64().unwrap() >= 1,
        "{view}"
    );
    assert_eq!(view["fill"]["entries"], 1);
    assert_eq!(theo.get("/api/v1/system").json()["outbox"]["entries"], 1);

    // The RIS comes up and refuses the report: dead-lettered after one refusal.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refuser = mllp_refuser(ris, stop.clone());
    let e = wait_for_entry(&theo, "dead letter", |e| e["state"] == "dead");
    assert_eq!(e["last_error"], "AR", "{e}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(refuser.join().unwrap() >= 1);
    // The RIS's words name the patient: the listing only says there are some; a
    // technician or admin reads them one entry at a time, audited; a radiologist may not.
    assert_eq!(e["peer_text"], true, "{e}");
    let listing = theo.get("/api/v1/outbox").text();
    assert!(!listing.contains("SMITH"), "{listing}");
    let id = e["id"].as_u64().unwrap();
    let words = format!("/api/v1/outbox/{id}/peer-text");
    let got = theo.get(&words);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["peer_text"], RIS_WORDS);
    assert_eq!(got.json()["last_error"], "AR");
    assert_eq!(theo.get("/api/v1/outbox/999999/peer-text").status, 404);
    assert_eq!(theo.get("/api/v1/outbox/x/peer-text").status, 404);
    let rita = d.login("rita", PW);
    assert_eq!(rita.get(&words).status, 403);

    // Only technicians re-queue; the request must name what.
    let ada = d.login("ada", PW);
    assert_eq!(ada.get("/api/v1/outbox").status, 200);
    assert_eq!(
        ada.send(
            "POST",
            "/api/v1/outbox/retry",
            &serde_json::json!({"id": id})
        )
        .status,
        403
    );
    let r = theo.send("POST", "/api/v1/outbox/retry", &serde_json::json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = theo.send(
        "POST",
        "/api/v1/outbox/retry",
        &serde_json::json!({"id": 999_999}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = theo.send(
        "POST",
        "/api/v1/outbox/retry",
        &serde_json::json!({"id": id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["requeued"], 1);
    let e = outbox_entry(&theo);
    assert_ne!(e["state"], "dead", "{e}");
    assert_eq!(e["rejections"], 0);

    let records = ada.get("/api/v1/audit?limit=1000").json()["records"].clone();
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["actor"] == "theo"
                && r["object"] == "outbox"
                && r["detail"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("entry {id}: 1 entries re-queued"))),
        "{records}"
    );
    let read = |r: &&serde_json::Value| {
        r["actor"] == "theo"
            && r["action"] == "view"
            && r["object"] == "outbox"
            && r["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("refusal of entry {id} (report report-1)"))
    };
    assert_eq!(
        records.as_array().unwrap().iter().filter(read).count(),
        1,
        "{records}"
    );
}

#[test]
fn an_uploaded_png_is_analysed_and_its_result_never_delivered() {
    let Some(shared) = samples_dir() else {
        return;
    };
    if !common::inference::inference_available() {
        return;
    }
    // A RIS that would take every report: nothing may reach it.
    let ris = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ris_port = ris.local_addr().unwrap().port();
    let d = Daemon::builder()
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &ris_port.to_string())
        .start();
    d.add_user("rita", "radiologist", PW);
    let rita = d.login("rita", PW);
    let png = std::fs::read(shared.join("png/PNEUMONIA_03.png")).unwrap();
    let r = upload(&rita, "PNEUMONIA_03.png", "image/png", &png);
    assert_eq!(r.status, 201, "{}", r.text());
    let uid = r.json()["study_uid"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    let row = loop {
        let row = wait_for_study(
            &rita,
            &uid,
            &["complete", "queued", "inferring", "done", "error"],
        );
        if row["state"] == "done" || row["state"] == "error" || Instant::now() > deadline {
            break row;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(row["state"], "done", "{row}\n{}", d.log());
    let detail = rita.get(&format!("/api/v1/studies/{uid}")).json();
    let result = &detail["result"];
    assert_eq!(result["images"][0]["status"], "analysed", "{result}");
    assert!(
        !result["findings"].as_array().unwrap().is_empty(),
        "{result}"
    );
    assert!(row["top_finding"]["label"].is_string(), "{row}");
    // Not delivered: no outbox entry, no connection to the RIS, and the log says why.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(detail["delivery"], serde_json::json!([]), "{detail}");
    ris.set_nonblocking(true).unwrap();
    assert!(ris.accept().is_err(), "the RIS was contacted");
    assert!(
        d.log().contains("manual upload, not delivered"),
        "{}",
        d.log()
    );
}

/// A user name with `@` (which account names may hold) is reached through its
/// percent-encoded path, as the browser sends it: the account can be changed and removed,
/// and its session ends with it. A segment that decodes to `/`, NUL or bytes that are not
/// UTF-8 is refused.
#[test]
fn users_named_with_an_at_sign_are_changed_and_removed_through_the_encoded_path() {
    let d = daemon_with_users();
    d.add_user("ana.silva@h1", "radiologist", PW);
    let ana = d.login("ana.silva@h1", PW);
    assert_eq!(ana.get("/api/v1/me").status, 200);
    let admin = d.login("ada", PW);
    let r = admin.send(
        "PUT",
        "/api/v1/users/ana.silva%40h1",
        &serde_json::json!({"disabled": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "ana.silva@h1");
    let r = admin.send(
        "DELETE",
        "/api/v1/users/ana.silva%40h1",
        &serde_json::json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["removed"], "ana.silva@h1");
    assert_eq!(ana.get("/api/v1/me").status, 401, "her session ended");
    let users = admin.get("/api/v1/users").json();
    assert!(!users.to_string().contains("ana.silva"), "removed: {users}");
    let new_user = serde_json::json!({"role": "radiologist", "password": PW});
    for bad in ["a%2Fb", "a%2fb", "a%00b", "a%FFb"] {
        let r = admin.send("PUT", &format!("/api/v1/users/{bad}"), &new_user);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(
        admin.get("/api/v1/users").json().as_array().unwrap().len(),
        3
    );
}

/// The accounts as `duli user list` prints them.
fn users_listed(d: &Daemon) -> Vec<serde_json::Value> {
    let out = run(&mut d.command(&["user", "list"]), Duration::from_secs(30));
    assert!(out.success(), "{}", out.combined());
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn enabled_admins(d: &Daemon) -> Vec<String> {
    users_listed(d)
        .iter()
        .filter(|u| u["role"] == "admin" && u["disabled"] == false)
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

const NEW_PW: &str = "a brand new long password";

/// A disable made while a password change of the same account is hashed (which takes a
/// while) survives that change: each change applies to the account as it is when written.
#[test]
fn a_disable_made_while_a_password_change_is_hashed_survives_it() {
    let d = daemon_with_users();
    let admin = d.login("ada", PW);
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            admin.send(
                "PUT",
                "/api/v1/users/rita",
                &serde_json::json!({"password": NEW_PW}),
            )
        });
        std::thread::sleep(Duration::from_millis(150));
        let r = admin.send(
            "PUT",
            "/api/v1/users/rita",
            &serde_json::json!({"disabled": true}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = slow.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    });
    let rita = users_listed(&d)
        .into_iter()
        .find(|u| u["name"] == "rita")
        .unwrap();
    assert_eq!(rita["disabled"], true, "the disable was undone: {rita}");
    assert_eq!(
        console_login_raw(d.console_addr(), "rita", NEW_PW).status,
        401
    );
}

/// A password change that began while tess was a technician, during which she is made an
/// admin and the only other admin steps down, leaves her the admin: the change does not
/// write back the role she had when it began.
#[test]
fn a_password_change_begun_before_a_promotion_does_not_leave_no_admin() {
    let d = daemon_with_users();
    d.add_user("tess", "technician", PW);
    let admin = d.login("ada", PW);
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            admin.send(
                "PUT",
                "/api/v1/users/tess",
                &serde_json::json!({"password": NEW_PW}),
            )
        });
        std::thread::sleep(Duration::from_millis(150));
        let r = admin.send(
            "PUT",
            "/api/v1/users/tess",
            &serde_json::json!({"role": "admin"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = admin.send(
            "PUT",
            "/api/v1/users/ada",
            &serde_json::json!({"role": "technician"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = slow.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    });
    assert_eq!(enabled_admins(&d), ["tess"], "{:?}", users_listed(&d));
    let tess = d.login("tess", NEW_PW);
    assert_eq!(tess.get("/api/v1/me").json()["role"], "admin");
}

/// Two admins demoting (even rounds) or removing (odd rounds) each other at the same
/// moment: one of them stays an admin, every round.
#[test]
fn two_admins_demoting_or_removing_each_other_at_once_leave_one_admin() {
    let d = daemon_with_users();
    d.add_user("bo", "admin", PW);
    let mut winner = d.login("ada", PW);
    for round in 0..8 {
        let winner_name = winner.login.json()["user"].as_str().unwrap().to_string();
        let loser_name = if winner_name == "ada" { "bo" } else { "ada" };
        let loser = d.login(loser_name, PW);
        let (method, body) = if round % 2 == 0 {
            ("PUT", serde_json::json!({"role": "technician"}))
        } else {
            ("DELETE", serde_json::json!({}))
        };
        let start = std::sync::Barrier::new(2);
        let (by_winner, by_loser) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                start.wait();
                winner.send(method, &format!("/api/v1/users/{loser_name}"), &body)
            });
            let b = s.spawn(|| {
                start.wait();
                loser.send(method, &format!("/api/v1/users/{winner_name}"), &body)
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        let admins = enabled_admins(&d);
        assert_eq!(
            admins.len(),
            1,
            "round {round}: {method} of each other left {admins:?} ({} {}; {} {})",
            by_winner.status,
            by_winner.text(),
            by_loser.status,
            by_loser.text()
        );
        if admins[0] != winner_name {
            winner = loser;
        }
        let other = if admins[0] == "ada" { "bo" } else { "ada" };
        let r = winner.send(
            "PUT",
            &format!("/api/v1/users/{other}"),
            &serde_json::json!({"role": "admin", "password": PW, "disabled": false}),
        );
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
}

/// The session and CSRF cookies are `__Host-` cookies (no other host of the domain can
/// set them), and a request that carries two session cookies is refused instead of being
/// served with whichever comes first; a cookie of the old name set for the whole domain is
/// not a session cookie.
#[test]
fn host_only_cookies_and_two_session_cookies_are_refused() {
    let d = daemon_with_users();
    let addr = d.console_addr();
    let s = d.login("rita", PW);
    let cookies = s.login.headers["set-cookie"].clone();
    let session = cookies
        .lines()
        .find(|l| l.starts_with("__Host-duli_session="))
        .unwrap_or_else(|| panic!("no __Host- session cookie: {cookies}"));
    assert!(
        cookies.lines().any(|l| l.starts_with("__Host-duli_csrf=")),
        "no __Host- CSRF cookie: {cookies}"
    );
    for l in cookies.lines() {
        assert!(l.contains("Path=/;") && l.contains("Secure"), "{l}");
        assert!(!l.to_ascii_lowercase().contains("domain="), "{l}");
    }
    let own = session.split(';').next().unwrap();
    let planted = format!("__Host-duli_session={}", "ab".repeat(32));
    let get = |headers: &[(&str, &str)]| {
        https_request(
            addr,
            "GET",
            "/api/v1/me",
            headers,
            None,
            Duration::from_secs(10),
        )
        .unwrap()
    };
    assert_eq!(get(&[("Cookie", own)]).status, 200);
    for (first, second) in [(own, planted.as_str()), (planted.as_str(), own)] {
        let one_header = format!("{first}; {second}");
        for r in [
            get(&[("Cookie", &one_header)]),
            get(&[("Cookie", first), ("Cookie", second)]),
        ] {
            assert_eq!(r.status, 401, "{}", r.text());
            assert!(
                r.text().contains("more than one session cookie"),
                "{}",
                r.text()
            );
        }
    }
    let old_name = format!("duli_session={}; {own}", "ab".repeat(32));
    assert_eq!(get(&[("Cookie", &old_name)]).json()["user"], "rita");
    let r = s.send("POST", "/api/v1/logout", &serde_json::json!({}));
    assert_eq!(r.status, 200);
    assert!(r.headers["set-cookie"]
        .lines()
        .all(|l| l.starts_with("__Host-") && l.contains("Max-Age=0")));
}

/// Once retention prunes an instance's pixel data, its preview goes too: the image and
/// its window answer 410 although both were cached, and the cached copy is removed from
/// `<data_dir>/previews/`.
#[test]
fn a_pruned_instance_has_no_preview_and_its_cached_copy_is_removed() {
    use duli::model::StudyState;
    let Some(files) = sample_dicoms("explicit-le") else {
        return;
    };
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    let file = &files[0];
    let uid = dicom_attr(file, dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let sop = dicom_attr(file, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
    let root = temp_dir("pruned-preview");
    let data = root.path().join("data");
    let mut d = Daemon::builder().data_dir(&data).start();
    d.add_user("rita", "radiologist", PW);
    d.storescu("MODALITY", &[], std::slice::from_ref(file))
        .unwrap()
        .assert_success("storescu");
    let s = d.login("rita", PW);
    wait_for_study(&s, &uid, &["complete", "queued"]);
    let preview = format!("/api/v1/studies/{uid}/instances/{sop}/preview");
    let info = format!("{preview}-info");
    assert_eq!(s.get(&preview).status, 200);
    assert_eq!(s.get(&info).status, 200);
    let (png, json) = duli::console::preview::cache_paths(&data, &sop);
    assert!(png.exists() && json.exists(), "preview not cached");

    // The study's analysis finished (inference is off here: set while the daemon is
    // stopped), so retention may prune it for disk space.
    assert!(d.terminate(Duration::from_secs(30)).is_some());
    {
        let store = duli::store::Store::open(&data).unwrap();
        store
            .transition(
                &uid,
                &[StudyState::Complete, StudyState::Queued],
                StudyState::Done,
            )
            .unwrap();
        store.flush_blocking().unwrap();
    }
    // A reserve larger than any disk: the first retention pass prunes the study.
    let d = Daemon::builder()
        .data_dir(&data)
        .config("retention", "disk_reserve_mb", "16000000")
        .start();
    let s = d.login("rita", PW);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let detail = s.get(&format!("/api/v1/studies/{uid}")).json();
        if detail["instances"][0]["pruned"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned: {detail}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for path in [&preview, &info] {
        assert_eq!(s.get(path).status, 410, "{path}");
    }
    assert!(!png.exists() && !json.exists(), "cached preview left");
}

/// The audit trail is anchored outside the index: after the index is deleted (the daemon
/// rebuilds it from the files), `duli audit verify` reports the trail broken and names the
/// records that are missing, instead of an intact trail of the records made since.
#[test]
fn a_deleted_index_is_reported_by_duli_audit_verify() {
    use duli::audit::{Action, Audit, Event, ANCHOR_TAIL};
    let mut d = daemon_with_users();
    d.login("rita", PW);
    assert!(d.terminate(Duration::from_secs(30)).is_some());
    // More records than the anchor keeps whole.
    let last = {
        let store = duli::store::Store::open(d.data_dir()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for i in 0..ANCHOR_TAIL {
            audit
                .append(Event::new("rita", Action::View, &format!("1.2.{i}")))
                .unwrap();
        }
        store.flush_blocking().unwrap();
        audit.head().unwrap().0
    };
    std::fs::remove_dir_all(d.data_dir().join("index")).unwrap();
    // The accounts went with the index too: the trail is checked without logging in.
    d.restart();
    let out = run(
        &mut d.command(&["audit", "verify"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.stdout.contains(&format!(
            "BROKEN at record 0: records 0 to {last} are missing; record {} says: audit trail lost with the index: last known seq {last} hash ",
            last + 1
        )),
        "{}",
        out.combined()
    );
}
