//! First-time setup over real HTTPS on loopback: the setup code written on the box (in a
//! file the log names, never in the log or the support bundle), refusal without it, with a
//! wrong one, cross-site or without JSON, throttling of wrong codes, no takeover of an
//! existing account, the first admin created with the right code (audit record, code file
//! gone), the route closed for good (also after a restart), the user name fixed by
//! provisioning, and an administrator provisioned with a password created at start.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const PW: &str = "correct horse battery staple";

fn setup_request(d: &Daemon, body: &serde_json::Value, headers: &[(&str, &str)]) -> HttpResponse {
    https_request(
        d.console_addr(),
        "POST",
        "/api/v1/setup",
        headers,
        Some(("application/json", body.to_string().as_bytes())),
        Duration::from_secs(30),
    )
    .expect("setup request")
}

fn setup_status(d: &Daemon) -> serde_json::Value {
    let r = d.http_get("/api/v1/setup").expect("setup status");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn code_file(d: &Daemon) -> std::path::PathBuf {
    d.data_dir().join("console/setup-code")
}

/// The code the daemon wrote on the box, after checking the file is private.
fn read_code(d: &Daemon) -> String {
    let path = code_file(d);
    let mode = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), d.log()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "setup code file mode");
    std::fs::read_to_string(&path).unwrap().trim().to_string()
}

#[test]
fn first_admin_needs_the_code_from_the_box_then_setup_closes_for_good() {
    let mut d = Daemon::start();
    let st = setup_status(&d);
    assert_eq!(st["required"], true, "{st}");
    assert!(st["username"].is_null());
    assert_eq!(st["accounts"], false);
    let code = read_code(&d);
    assert_eq!(code.len(), 19, "XXXX-XXXX-XXXX-XXXX: {code}");
    // The log names the file, never the code: logs travel (journal exports, support
    // bundles), and whoever reads the code can claim the box while setup is open.
    let log = d.log();
    assert!(!log.contains(&code), "the code is in the log:\n{log}");
    assert!(
        !log.contains(&code.replace('-', "")),
        "the code is in the log"
    );
    assert!(
        log.contains(&code_file(&d).display().to_string()),
        "the log names the code's file:\n{log}"
    );

    // No code, a wrong code, no JSON, another site: refused, nothing created.
    let no_code = setup_request(
        &d,
        &serde_json::json!({"username": "ada", "password": PW}),
        &[],
    );
    assert_eq!(no_code.status, 400, "{}", no_code.text());
    let wrong = setup_request(
        &d,
        &serde_json::json!({"code": "AAAA-BBBB-CCCC-DDDD", "username": "ada", "password": PW}),
        &[],
    );
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    let body = serde_json::json!({"code": code, "username": "ada", "password": PW}).to_string();
    let form = https_request(
        d.console_addr(),
        "POST",
        "/api/v1/setup",
        &[],
        Some(("text/plain", body.as_bytes())),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(form.status, 400, "a non-JSON body: {}", form.text());
    let cross = setup_request(
        &d,
        &serde_json::json!({"code": code, "username": "ada", "password": PW}),
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(cross.status, 403, "another origin: {}", cross.text());
    let short = setup_request(
        &d,
        &serde_json::json!({"code": code, "username": "ada", "password": "short"}),
        &[],
    );
    assert_eq!(short.status, 400, "{}", short.text());
    assert_eq!(console_login_raw(d.console_addr(), "ada", PW).status, 401);
    assert_eq!(setup_status(&d)["required"], true);

    // The right code, typed in lower case without dashes, from the console's own origin.
    let origin = format!("https://{}", d.console_addr());
    let ok = setup_request(
        &d,
        &serde_json::json!({
            "code": code.replace('-', "").to_lowercase(),
            "username": "ada",
            "password": PW,
        }),
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    assert_eq!(ok.json()["role"], "admin");
    assert!(!code_file(&d).exists(), "the code is deleted after use");
    assert_eq!(setup_status(&d)["required"], false);

    // Closed for good: the same code, another name, after a restart.
    for name in ["ada", "mallory"] {
        let again = setup_request(
            &d,
            &serde_json::json!({"code": code, "username": name, "password": PW}),
            &[],
        );
        assert_eq!(again.status, 409, "{}", again.text());
    }
    d.restart();
    assert!(!code_file(&d).exists(), "no new code once an admin exists");
    assert_eq!(setup_status(&d)["required"], false);
    let again = setup_request(
        &d,
        &serde_json::json!({"code": code, "username": "mallory", "password": PW}),
        &[],
    );
    assert_eq!(again.status, 409);

    // The admin logs in normally; the audit trail holds the creation and the wrong code.
    let admin = d.login("ada", PW);
    assert_eq!(admin.get("/api/v1/me").json()["role"], "admin");
    let audit = admin.get("/api/v1/audit").json();
    let records = audit["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["action"] == "user_change"
            && r["object"] == "ada"
            && r["success"] == true
            && r["detail"].as_str().unwrap().contains("first-time setup")),
        "{audit}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "login_failed" && r["detail"] == "wrong setup code"),
        "{audit}"
    );
    let users = admin.get("/api/v1/users").json();
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
}

#[test]
fn wrong_codes_are_throttled_and_existing_accounts_are_not_taken_over() {
    let d = Daemon::start();
    let code = read_code(&d);
    let wrong = serde_json::json!({"code": "WRONG", "username": "ada", "password": PW});
    for _ in 0..5 {
        assert_eq!(setup_request(&d, &wrong, &[]).status, 403);
    }
    let right = serde_json::json!({"code": code, "username": "ada", "password": PW});
    let r = setup_request(&d, &right, &[]);
    assert_eq!(
        r.status,
        429,
        "throttled even with the right code: {}",
        r.text()
    );
    let retry_after: u64 = r.headers["retry-after"].parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(setup_request(&d, &wrong, &[]).status, 429);
    // Waiting what Retry-After said (rounded up) is enough.
    std::thread::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100));
    // An existing account (not an admin) is never taken over.
    d.add_user("rita", "radiologist", PW);
    assert_eq!(setup_status(&d)["accounts"], true);
    let takeover = serde_json::json!({"code": code, "username": "rita", "password": PW});
    let r = setup_request(&d, &takeover, &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("exists already"), "{}", r.text());
    let r = setup_request(&d, &right, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        d.login("rita", PW).get("/api/v1/me").json()["role"],
        "radiologist"
    );
    // The throttled attempts are on the trail: the first of the window, the rest counted.
    let records = d.login("ada", PW).get("/api/v1/audit?limit=1000").json()["records"]
        .as_array()
        .unwrap()
        .clone();
    let throttled = records
        .iter()
        .filter(|r| {
            r["actor"] == "setup"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("throttled for"))
        })
        .count();
    assert_eq!(throttled, 1, "{records:#?}");
}

fn daemon_with_pending_admin(pending: &str) -> (Daemon, TestDir) {
    let etc = temp_dir("setup-etc");
    let config = etc.path().join("duli.toml");
    std::fs::write(&config, "[device]\nsite_id = \"setup-test\"\n").unwrap();
    std::fs::write(etc.path().join("pending-admin.toml"), pending).unwrap();
    let d = Daemon::builder()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    (d, etc)
}

fn pending_gone(etc: &Path) -> bool {
    let p = etc.join("pending-admin.toml");
    std::fs::read_to_string(p).map_or(true, |t| t.trim().is_empty())
}

#[test]
fn provisioning_fixes_the_admin_name() {
    let (d, etc) = daemon_with_pending_admin("name = \"ana.admin\"\n");
    let st = setup_status(&d);
    assert_eq!(st["required"], true);
    assert_eq!(st["username"], "ana.admin", "{st}");
    let code = read_code(&d);
    let other = setup_request(
        &d,
        &serde_json::json!({"code": code, "username": "eve", "password": PW}),
        &[],
    );
    assert_eq!(other.status, 400, "{}", other.text());
    assert!(other.text().contains("ana.admin"));
    let ok = setup_request(&d, &serde_json::json!({"code": code, "password": PW}), &[]);
    assert_eq!(ok.status, 201, "{}", ok.text());
    assert_eq!(ok.json()["name"], "ana.admin");
    assert!(pending_gone(etc.path()), "pending-admin.toml is consumed");
    d.login("ana.admin", PW);
}

#[test]
fn a_provisioned_admin_with_a_password_is_created_at_start() {
    let (d, etc) = daemon_with_pending_admin(&format!("name = \"ana\"\npassword = \"{PW}\"\n"));
    assert!(pending_gone(etc.path()), "the initial password is not kept");
    assert!(!code_file(&d).exists(), "no setup code is needed");
    assert_eq!(setup_status(&d)["required"], false);
    let admin = d.login("ana", PW);
    assert_eq!(admin.get("/api/v1/me").json()["role"], "admin");
    let r = setup_request(
        &d,
        &serde_json::json!({"code": "x", "username": "eve", "password": PW}),
        &[],
    );
    assert_eq!(r.status, 409);
}

/// The support bundle (`duli diagnostics`) travels outside the hospital: it never carries
/// the open setup code, not even when the journal it collects quotes it, as an older
/// version logged it (as written, or as typed without dashes).
#[test]
fn the_support_bundle_never_carries_the_open_setup_code() {
    let Some(tar) = require_tool("tar") else {
        return;
    };
    let mut d = Daemon::start();
    let code = read_code(&d);
    // journalctl as the bundle runs it: the daemon's own log, then an older version's
    // lines quoting the code.
    let bin = temp_dir("journal");
    let journal = bin.path().join("journal.txt");
    std::fs::write(
        &journal,
        format!(
            "{}\nduli[17]: console: no administrator yet; first-time setup is open on the \
             console with setup code {code} (also in {})\nduli[17]: typed {}\n",
            d.log(),
            code_file(&d).display(),
            code.replace('-', "")
        ),
    )
    .unwrap();
    let shim = bin.path().join("journalctl");
    std::fs::write(&shim, format!("#!/bin/sh\ncat '{}'\n", journal.display())).unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let bundle = bin.path().join("support.tar.gz");
    let mut cmd = d.command(&["diagnostics", "--out", bundle.to_str().unwrap()]);
    cmd.env("PATH", &path);
    run(&mut cmd, Duration::from_secs(120)).assert_success("duli diagnostics");
    let unpacked = bin.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run(
        std::process::Command::new(tar)
            .arg("-xzf")
            .arg(&bundle)
            .arg("-C")
            .arg(&unpacked),
        Duration::from_secs(30),
    )
    .assert_success("tar -xzf");
    let root = unpacked.join("duli-diagnostics");
    let logs = std::fs::read_to_string(root.join("logs.txt")).unwrap();
    assert!(
        logs.contains("first-time setup is open") && logs.contains("<redacted>"),
        "the shimmed journal is in the bundle, scrubbed: {logs}"
    );
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
        let name = e.file_name();
        assert!(!text.contains(&code), "{name:?} carries the setup code");
        assert!(
            !text.contains(&code.replace('-', "")),
            "{name:?} carries the setup code as typed"
        );
    }
    // Setup is still open with that code: the bundle changed nothing on the box.
    assert_eq!(read_code(&d), code);
    // Making it is in the audit trail: an export of the support bundle by whoever ran it.
    let records = d.stop_and_read_audit();
    let made: Vec<_> = records
        .iter()
        .filter(|r| r.object == duli::diagnostics::AUDIT_OBJECT)
        .collect();
    assert_eq!(made.len(), 1, "{records:?}");
    assert_eq!(made[0].action, duli::audit::Action::Export);
    assert!(made[0].actor.starts_with("cli:"), "{:?}", made[0]);
    assert!(
        made[0].detail.contains(bundle.to_str().unwrap()) && made[0].success,
        "{:?}",
        made[0]
    );
}

/// A pending administrator (as `duli provision` writes it: the name and a hash) whose name
/// an existing account holds is never applied: the account keeps its role and password, the
/// pending file is removed all the same, and first-time setup stays open without a fixed
/// name.
#[test]
fn a_provisioned_admin_never_replaces_an_existing_account() {
    let (mut d, etc) = daemon_with_pending_admin("");
    d.add_user("rita", "radiologist", PW);
    d.kill();
    let pending = duli::provision::ProvisionedAdmin {
        name: "rita".into(),
        password_hash: Some(duli::accounts::hash_password("another long password").unwrap()),
        password: None,
    };
    std::fs::write(
        etc.path().join("pending-admin.toml"),
        toml::to_string(&pending).unwrap(),
    )
    .unwrap();
    d.restart();
    assert!(pending_gone(etc.path()), "the pending file is consumed");
    let rita = d.login("rita", PW);
    assert_eq!(rita.get("/api/v1/me").json()["role"], "radiologist");
    let r = console_login_raw(d.console_addr(), "rita", "another long password");
    assert_ne!(r.status, 200, "{}", r.text());
    assert!(d.log().contains("never replaced"), "{}", d.log());
    let st = setup_status(&d);
    assert_eq!(st["required"], true, "{st}");
    assert!(st["username"].is_null(), "{st}");
}

/// Once an administrator exists, a pending administrator left beside `duli.toml` is removed
/// at start and changes nothing.
#[test]
fn a_pending_admin_is_removed_at_start_when_an_admin_exists() {
    let (mut d, etc) = daemon_with_pending_admin(&format!("name = \"ana\"\npassword = \"{PW}\"\n"));
    assert!(pending_gone(etc.path()));
    // Killed, not stopped: the account created at start is durable already.
    d.kill();
    std::fs::write(
        etc.path().join("pending-admin.toml"),
        "name = \"mallory\"\npassword = \"another long password\"\n",
    )
    .unwrap();
    d.restart();
    assert!(
        pending_gone(etc.path()),
        "the stale pending file is consumed"
    );
    let r = console_login_raw(d.console_addr(), "mallory", "another long password");
    assert_ne!(r.status, 200, "{}", r.text());
    d.login("ana", PW);
}
