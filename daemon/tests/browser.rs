//! The console end to end in headless Chromium, driven through chromedriver's WebDriver
//! HTTP API: log in, see a study that `storescu` just sent appear in the worklist without
//! reloading, open it, check the 16-bit image renders and window/level follows a drag,
//! toggle the heatmap, give feedback, log out; then sample studies analysed by the real
//! model, a PNG uploaded through the upload page, and the technician's C-ECHO table and
//! outbox retry. Screenshots go to `$CARGO_TARGET_TMPDIR/console-screenshots/`
//! (`worklist-analysed.png` and `study-analysed.png` are the README's).

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One request to chromedriver, which keeps connections open: the answer is read up to
/// its Content-Length instead of to the end of the stream.
fn wd_request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        addr.port(),
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).unwrap();
    (status, serde_json::from_slice(&buf).unwrap_or(Value::Null))
}

struct WebDriver {
    addr: SocketAddr,
    session: String,
}

impl WebDriver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let text = body.map(|b| b.to_string());
        let (status, v) = wd_request(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            text.as_deref(),
        );
        assert_eq!(status, 200, "webdriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn start(addr: SocketAddr) -> WebDriver {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }
        }}})
        .to_string();
        let (status, v) = wd_request(addr, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "{v}");
        WebDriver {
            addr,
            session: v["value"]["sessionId"].as_str().unwrap().to_string(),
        }
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("find {css}: {v}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls `script` (a JS expression) until it is truthy.
    fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(&format!("return ({script});"));
            if v.as_bool() != Some(false) && !v.is_null() && v != json!(0) && v != json!("") {
                return v;
            }
            if Instant::now() > deadline {
                let dom = self.js("return document.body.innerText;");
                panic!("timed out waiting for {what}; page text: {dom}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until an element matches `css`.
    fn wait_css(&self, css: &str, secs: u64) {
        self.wait_for(
            css,
            &format!("document.querySelector({css:?})"),
            Duration::from_secs(secs),
        );
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    fn drag(&self, css: &str, dx: i64, dy: i64) {
        let e = self.find(css);
        self.call(
            "POST",
            "/actions",
            Some(json!({"actions": [{
                "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                "actions": [
                    {"type": "pointerMove", "origin": {ELEMENT: e}, "x": 0, "y": 0},
                    {"type": "pointerDown", "button": 0},
                    {"type": "pointerMove", "origin": "pointer", "x": dx / 2, "y": dy / 2, "duration": 100},
                    {"type": "pointerMove", "origin": "pointer", "x": dx / 2, "y": dy / 2, "duration": 100},
                    {"type": "pointerUp", "button": 0}
                ]
            }]})),
        );
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let _ = wd_request(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn study_uid_of(file: &std::path::Path) -> String {
    dicom_attr(file, dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
}

/// chromedriver's path when it and chromium are installed; a SKIP line otherwise.
fn chromedriver() -> Option<PathBuf> {
    match (which("chromedriver"), which("chromium")) {
        (Some(driver), Some(_)) => Some(driver),
        _ => {
            skip("chromium or chromium-driver absent (apt-get install chromium chromium-driver)");
            None
        }
    }
}

/// chromedriver on a free port with one headless Chromium session; the session ends
/// before the driver stops (fields drop in order).
struct Browser {
    wd: WebDriver,
    _driver: Background,
    _root: TestDir,
}

impl Browser {
    fn start(driver_bin: &std::path::Path) -> Browser {
        let port = free_port();
        let root = temp_dir("chromedriver");
        let mut driver = Background::spawn(
            "chromedriver",
            std::process::Command::new(driver_bin).arg(format!("--port={port}")),
            &root.path().join("chromedriver.log"),
        )
        .unwrap();
        driver
            .wait_for_port(loopback(port), Duration::from_secs(30))
            .unwrap();
        Browser {
            wd: WebDriver::start(loopback(port)),
            _driver: driver,
            _root: root,
        }
    }
}

#[test]
fn console_in_headless_chromium() {
    let Some(driver_bin) = chromedriver() else {
        return;
    };
    let Some(files) = sample_dicoms("explicit-le") else {
        return;
    };
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    let file = files[0].clone();
    let uid = study_uid_of(&file);
    let sop = ::duli::scu::prepare(&file).unwrap().sop_instance;

    let mut d = Daemon::start();
    d.add_user("rita", "radiologist", PW);
    // The analysis stage's result and heatmap for the study about to arrive.
    assert!(d.terminate(Duration::from_secs(30)).is_some());
    {
        let heat = image::RgbaImage::from_fn(64, 64, |x, y| {
            let d = ((x as i32 - 40).pow(2) + (y as i32 - 28).pow(2)) as f32;
            image::Rgba([255, 40, 0, (220.0 * (-d / 200.0).exp()) as u8])
        });
        std::fs::create_dir_all(d.data_dir().join("heatmaps")).unwrap();
        heat.save(d.data_dir().join("heatmaps/h.png")).unwrap();
        record_result(
            d.data_dir(),
            &uid,
            &sop,
            "1.0.0",
            &[
                ("PNEUMONIA", "233604007", 0.91),
                ("NORMAL", "17621005", 0.09),
            ],
            "heatmaps/h.png",
        );
    }
    d.restart();

    let browser = Browser::start(&driver_bin);
    let wd = &browser.wd;
    let base = format!("https://127.0.0.1:{}", d.console_port);

    // Log in.
    log_in(wd, &base, "rita", "#/worklist");
    wd.wait_css("#live.on", 20);
    assert_eq!(
        wd.js("return document.querySelectorAll('#worklist-body tr').length;"),
        json!(0)
    );
    // The page must not reload: mark it and check the mark survives.
    wd.js("window.__sameDocument = 1;");

    // A study sent now appears without a reload, urgent, with its top finding.
    d.storescu("MODALITY", &[], std::slice::from_ref(&file))
        .unwrap()
        .assert_success("storescu");
    wd.wait_for(
        "the study in the worklist",
        &format!("document.querySelector('#worklist-body tr[data-study=\"{uid}\"]')"),
        Duration::from_secs(20),
    );
    assert_eq!(
        wd.js("return window.__sameDocument;"),
        json!(1),
        "page reloaded"
    );
    let row = wd.js(&format!(
        "return document.querySelector('#worklist-body tr[data-study=\"{uid}\"]').innerText;"
    ));
    let row = row.as_str().unwrap();
    assert!(
        row.contains("URGENT") && row.contains("PNEUMONIA 91.0%"),
        "{row}"
    );
    let shot = wd.screenshot("worklist.png");

    // Open the study: the image renders from the 16-bit preview.
    wd.click(&format!("#worklist-body tr[data-study=\"{uid}\"] a"));
    wd.wait_for(
        "rendered image",
        "document.querySelector('#image') && document.querySelector('#image').dataset.rendered === 'true'",
        Duration::from_secs(30),
    );
    let spread = wd.js(
        "const c = document.querySelector('#image');
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
         let lo = 255, hi = 0;
         for (let i = 0; i < d.length; i += 4 * 97) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
         return [c.width, c.height, lo, hi];",
    );
    let s: Vec<i64> = serde_json::from_value(spread).unwrap();
    assert!(s[0] > 100 && s[1] > 100, "canvas size {s:?}");
    assert!(s[3] - s[2] > 100, "image has contrast: {s:?}");
    let page = wd.js("return document.body.innerText;");
    let page = page.as_str().unwrap();
    for want in [
        "AI-generated, preliminary",
        "pneumonia-xception 1.0.0",
        "PNEUMONIA",
        "91.0%",
    ] {
        assert!(
            page.contains(want),
            "{want:?} not on the study page: {page}"
        );
    }
    assert_eq!(
        wd.js("return document.querySelectorAll('#treemap .tile').length;"),
        json!(2)
    );

    // Window/level follows a drag without asking the server.
    let before = wd.js("return document.querySelector('#wl').textContent;");
    wd.drag("#image", 120, -60);
    let after = wd.wait_for(
        "window/level change",
        &format!("document.querySelector('#wl').textContent !== {before} && document.querySelector('#wl').textContent"),
        Duration::from_secs(10),
    );
    assert_ne!(before, after);

    // Heatmap overlay: loaded, then toggled off and on.
    wd.wait_for(
        "heatmap image",
        "document.querySelector('#heatmap') && document.querySelector('#heatmap').complete && document.querySelector('#heatmap').naturalWidth === 64",
        Duration::from_secs(10),
    );
    let shot2 = wd.screenshot("study.png");
    wd.click("#heat-toggle");
    assert_eq!(
        wd.js("return document.querySelector('#heatmap').hidden;"),
        json!(true)
    );
    wd.click("#heat-toggle");
    assert_eq!(
        wd.js("return document.querySelector('#heatmap').hidden;"),
        json!(false)
    );

    // Feedback.
    wd.type_into("#feedback-comment", "agree, right lower lobe");
    wd.click("#agree");
    wd.wait_for(
        "feedback recorded",
        "document.querySelector('#feedback-msg').textContent === 'Feedback recorded.'",
        Duration::from_secs(10),
    );
    assert!(wd
        .js("return document.querySelector('#feedback-list').innerText;")
        .as_str()
        .unwrap()
        .contains("rita: agree"));

    // A logout whose request fails (the network, a restarting daemon) leaves the screen
    // as it is and says so: the session is still live, and clearing the screen would let
    // the next person at a shared PC back in with it.
    wd.js(
        "const f = window.fetch; window.fetch = (p, o) => p === '/api/v1/logout' && !window.failedOnce \
         ? (window.failedOnce = true, Promise.reject(new TypeError('network down'))) : f(p, o); \
         return true;",
    );
    wd.click("#logout");
    wd.wait_for(
        "the failed logout said",
        "document.querySelector('#status').textContent.includes('Logout failed')",
        Duration::from_secs(10),
    );
    assert_eq!(
        wd.js("return document.querySelector('#who').hidden || !!document.querySelector('#login-form');"),
        json!(false),
        "the screen was cleared though the session lives"
    );
    // Log out: back to the login form, and the API refuses the old session.
    wd.click("#logout");
    wd.wait_css("#login-form", 10);
    let status = wd.js(
        "const x = new XMLHttpRequest(); x.open('GET', '/api/v1/me', false); x.send(); return x.status;",
    );
    assert_eq!(status, json!(401));

    // The server saw it all: view, feedback and logout are in the audit trail.
    let out = run(
        &mut d.command(&["audit", "verify"]),
        Duration::from_secs(30),
    );
    out.assert_success("audit verify");
    eprintln!("screenshots: {} {}", shot.display(), shot2.display());
}

/// Logs `user` in through the login form and waits for `hash`.
fn log_in(wd: &WebDriver, base: &str, user: &str, hash: &str) {
    wd.go(&format!("{base}/#/login"));
    wd.wait_css("#login-form", 20);
    wd.type_into("#username", user);
    wd.type_into("#password", PW);
    wd.click("#login-form button[type=submit]");
    wd.wait_for(
        hash,
        &format!("location.hash === '{hash}'"),
        Duration::from_secs(20),
    );
}

/// Sample studies analysed by the real model (when it is installed), an image uploaded
/// through the upload page, the worklist and study pages with real results, then the
/// technician's system page: the C-ECHO table and the outbox with a retry.
#[test]
fn uploads_results_and_the_system_page_in_headless_chromium() {
    let Some(driver_bin) = chromedriver() else {
        return;
    };
    let Some(samples) = samples_dir() else {
        return;
    };
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    let analysed = common::inference::inference_available();
    if !analysed {
        skip("OpenVINO runtime or model absent: studies stay queued, no results shown");
    }
    // A RIS that is down: the reports of the received studies wait in the outbox.
    let ris = free_port();
    let mut builder =
        Daemon::builder()
            .config("hl7", "enabled", "true")
            .config("hl7", "port", &ris.to_string());
    if analysed {
        builder = builder.with_inference();
    }
    let d = builder.start();
    d.add_user("rita", "radiologist", PW);
    d.add_user("theo", "technician", PW);

    let browser = Browser::start(&driver_bin);
    let wd = &browser.wd;
    let base = format!("https://127.0.0.1:{}", d.console_port);
    log_in(wd, &base, "rita", "#/worklist");

    let files: Vec<PathBuf> = ["PNEUMONIA_01", "NORMAL_02", "PNEUMONIA_05", "NORMAL_07"]
        .iter()
        .map(|n| samples.join(format!("dicom/explicit-le/{n}.dcm")))
        .collect();
    d.storescu("MODALITY", &[], &files)
        .unwrap()
        .assert_success("storescu");

    // Upload a PNG through the page; the answer links to the new study.
    wd.click("#nav a[href='#/upload']");
    wd.wait_css("#upload-file", 10);
    // ChromeDriver takes only canonical paths for file inputs.
    let png = samples.join("png/PNEUMONIA_03.png").canonicalize().unwrap();
    wd.type_into("#upload-file", png.to_str().unwrap());
    wd.wait_css("#upload-study-link", 30);
    let msg = wd.js("return document.querySelector('#upload-msg').textContent;");
    assert!(
        msg.as_str().unwrap().contains("as patient UPLOAD-"),
        "{msg}"
    );
    assert_eq!(
        wd.js("return document.querySelector('#upload-progress').value;"),
        json!(100)
    );
    wd.screenshot("upload.png");
    wd.click("#upload-study-link");
    wd.wait_for(
        "uploaded study page",
        "document.querySelector('#image') && document.querySelector('#image').dataset.rendered === 'true'",
        Duration::from_secs(30),
    );
    let page = wd.js("return document.body.innerText;");
    assert!(page.as_str().unwrap().contains("UPLOAD-"), "{page}");

    // The worklist: five studies, analysed when the model is installed.
    wd.go(&format!("{base}/#/worklist"));
    let want = if analysed {
        "[...document.querySelectorAll('#worklist-body tr')].length === 5 && \
         [...document.querySelectorAll('#worklist-body .state')].every((e) => e.textContent === 'done')"
    } else {
        "document.querySelectorAll('#worklist-body tr').length === 5"
    };
    wd.wait_for(
        "five studies in the worklist",
        want,
        Duration::from_secs(240),
    );
    let shot_worklist = wd.screenshot("worklist-analysed.png");

    // The first urgent study with its real heatmap.
    if analysed {
        let urgent = wd.js("return document.querySelectorAll('#worklist-body tr.urgent').length;");
        assert!(urgent.as_u64().unwrap() >= 1, "no urgent study");
        // A received (not uploaded) urgent study; its heatmap is drawn after the result,
        // so open it again until the page has one.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            wd.go(&format!("{base}/#/worklist"));
            wd.wait_for(
                "worklist rows",
                "document.querySelectorAll('#worklist-body tr').length === 5",
                Duration::from_secs(20),
            );
            wd.js("[...document.querySelectorAll('#worklist-body tr.urgent')]
                     .find((r) => !r.innerText.includes('UPLOAD-')).querySelector('a').click();");
            wd.wait_for(
                "analysed study",
                "document.querySelector('#image') && document.querySelector('#image').dataset.rendered === 'true'",
                Duration::from_secs(30),
            );
            let heat = wd.js("const h = document.querySelector('#heatmap'); \
                 return !!h && h.complete && h.naturalWidth > 0;");
            if heat == json!(true) {
                break;
            }
            assert!(Instant::now() < deadline, "no heatmap on the study page");
            std::thread::sleep(Duration::from_secs(2));
        }
        // Its report waits for the RIS, which is down.
        let delivery = wd.js("return document.querySelector('#delivery').innerText;");
        assert!(
            delivery.as_str().unwrap().contains("hl7")
                && delivery.as_str().unwrap().contains("report"),
            "{delivery}"
        );
        let shot_study = wd.screenshot("study-analysed.png");
        eprintln!(
            "screenshots: {} {}",
            shot_worklist.display(),
            shot_study.display()
        );
    }

    // The technician's system page: C-ECHO to this box, and the outbox with a retry.
    wd.click("#logout");
    wd.wait_css("#login-form", 10);
    log_in(wd, &base, "theo", "#/system");
    wd.wait_css("#echo-run", 10);
    wd.click("#echo-run");
    wd.wait_css("#echo-body tr", 30);
    let row = wd.js("return document.querySelector('#echo-body tr').innerText;");
    assert!(
        row.as_str().unwrap().contains("this box") && row.as_str().unwrap().contains("success"),
        "{row}"
    );
    if analysed {
        // Four received studies, four reports waiting for the RIS (the upload has none).
        wd.wait_for(
            "reports waiting for the RIS",
            "document.querySelectorAll('.outbox-entries tbody tr').length === 4 || \
             (document.querySelector('#outbox-refresh').click(), false)",
            Duration::from_secs(60),
        );
        wd.wait_for(
            "retry button of the RIS",
            "document.querySelector('#retry-dest-hl7') || \
             (document.querySelector('#outbox-refresh').click(), false)",
            Duration::from_secs(60),
        );
        wd.screenshot("system.png");
        // The RIS comes up and refuses each report with words naming the patient.
        let (_, _) = common::ris::scripted_ris_at(
            ris,
            std::sync::Arc::new(|_, id: &str| {
                common::ris::ar(id, "patient PNEU-01 SMITH^JOHN not found")
            }),
            Duration::ZERO,
        );
        wd.click("#retry-dest-hl7");
        let msg = wd.wait_for(
            "retry answer",
            "document.querySelector('#outbox-msg').textContent",
            Duration::from_secs(10),
        );
        assert!(
            msg.as_str().unwrap().starts_with("hl7: ")
                && msg.as_str().unwrap().ends_with("re-queued."),
            "{msg}"
        );
        // The listing says the RIS gave words, not what they are; the technician asks for
        // them (an audited read) and they show in the row.
        wd.wait_for(
            "the RIS's words to ask for",
            "document.querySelector('.peer-text button') || \
             (document.querySelector('#outbox-refresh').click(), false)",
            Duration::from_secs(60),
        );
        let listed = wd.js("return document.querySelector('.outbox-entries').innerText;");
        assert!(!listed.as_str().unwrap().contains("SMITH"), "{listed}");
        wd.js("document.querySelector('.peer-text button').click(); return null;");
        let words = wd.wait_for(
            "the RIS's words",
            "document.querySelector('.peer-text').textContent.includes('SMITH') && \
             document.querySelector('.peer-text').textContent",
            Duration::from_secs(10),
        );
        assert!(words.as_str().unwrap().contains("not found"), "{words}");
        wd.screenshot("system-peer-text.png");
    }
}

#[test]
fn first_time_setup_in_headless_chromium() {
    let Some(driver_bin) = chromedriver() else {
        return;
    };
    let d = Daemon::start();
    let code = std::fs::read_to_string(d.data_dir().join("console/setup-code")).unwrap();
    let browser = Browser::start(&driver_bin);
    let wd = &browser.wd;
    let base = format!("https://127.0.0.1:{}", d.console_port);

    // No account at all: the login page is the setup form.
    wd.go(&format!("{base}/"));
    wd.wait_for(
        "setup form",
        "document.querySelector('#setup-form')",
        Duration::from_secs(20),
    );
    wd.screenshot("first-time-setup.png");
    assert_eq!(
        wd.js("return getComputedStyle(document.getElementById('nav')).display + ' ' + getComputedStyle(document.getElementById('who')).display;"),
        json!("none none"),
        "no navigation or log-out button before anyone is logged in"
    );
    // A wrong code is refused on the page.
    wd.type_into("#setup-code", "AAAA-BBBB-CCCC-DDDD");
    wd.type_into("#setup-user", "ada");
    wd.type_into("#setup-password", PW);
    wd.type_into("#setup-again", PW);
    wd.click("#setup-form button[type=submit]");
    wd.wait_for(
        "refusal",
        "document.querySelector('#setup-form .error').textContent.includes('Wrong setup code')",
        Duration::from_secs(20),
    );
    wd.js("document.querySelector('#setup-code').value = '';");
    wd.type_into("#setup-code", code.trim());
    wd.click("#setup-form button[type=submit]");
    // Created, logged in, on the admin's home page.
    wd.wait_for(
        "logged in as the new admin",
        "location.hash === '#/users' && document.querySelector('#who-name').textContent === 'ada (admin)'",
        Duration::from_secs(30),
    );
    let shot = wd.screenshot("first-time-setup-done.png");
    assert!(shot.exists());
    // The audit page: the chain's state and whether the trail leaves the box.
    wd.click("#nav a[href='#/audit']");
    let forward = wd.wait_for(
        "forwarding state on the audit page",
        "document.querySelector('#audit-verify') && document.querySelector('#audit-forward')?.textContent",
        Duration::from_secs(20),
    );
    assert!(
        forward
            .as_str()
            .unwrap()
            .starts_with("Not forwarded to an audit record repository"),
        "{forward}"
    );
    // How full the trail is against its budget (the default, far from its alarm).
    let budget = wd.js("return document.querySelector('#audit-budget').textContent;");
    assert!(
        budget
            .as_str()
            .unwrap()
            .contains("records on this box, at most 1000000 kept"),
        "{budget}"
    );
    // The newest records, the whole trail of a new box on one page (no older page).
    let paging = wd.js("return document.querySelector('#audit-paging').textContent;");
    assert!(
        paging.as_str().unwrap().starts_with("Records #0–#"),
        "{paging}"
    );
    assert_eq!(
        wd.js("return !!document.querySelector('#audit-older');"),
        json!(false)
    );
    // One patient's records: none on a new box, the whole trail read.
    wd.js("document.querySelector('#audit-patient').value = 'PAT-X'; \
           document.querySelector('#audit-search button[type=submit]').click(); return true;");
    let searched = wd.wait_for(
        "a patient search on the audit page",
        "document.querySelector('#audit-paging')?.textContent.includes('naming patient PAT-X') && \
         document.querySelector('#audit-paging').textContent",
        Duration::from_secs(20),
    );
    assert_eq!(
        searched,
        json!("0 record(s) naming patient PAT-X, read back to #0 (the start of the trail on this box).All records"),
    );
    // From now on the login page is the login form.
    wd.click("#logout");
    wd.wait_for(
        "login form",
        "document.querySelector('#login-form') && !document.querySelector('#setup-form')",
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        wd.js("return !!document.querySelector('#setup-form');"),
        json!(false)
    );
}

/// The pediatric model and two studies outside what it knows: an adult is shown as not
/// applicable with its reason in the worklist and on the study page, and a study without
/// a usable age shows its caveat next to the findings.
#[test]
fn intended_use_in_headless_chromium() {
    let Some(driver_bin) = chromedriver() else {
        return;
    };
    if !common::inference::inference_available() {
        return;
    }
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    let dir = temp_dir("browser-intended-use");
    let make = |prefix, args| common::inference::make_dx_study(dir.path(), prefix, args);
    let (Some(adult), Some(unknown)) = (
        make("A", &["--outside-every", "1"]),
        make("U", &["--age", "none"]),
    ) else {
        return;
    };
    let d = Daemon::builder().with_inference().start();
    d.add_user("rita", "radiologist", PW);
    d.storescu("MODALITY", &[], &[adult, unknown])
        .unwrap()
        .assert_success("storescu");

    let browser = Browser::start(&driver_bin);
    let wd = &browser.wd;
    let base = format!("https://127.0.0.1:{}", d.console_port);
    log_in(wd, &base, "rita", "#/worklist");
    let reason = "age 45 y outside the model's 1\u{2013}5 y";
    wd.wait_for(
        "both studies analysed",
        "[...document.querySelectorAll('#worklist-body .state')].filter((e) => e.textContent === 'done').length === 2",
        Duration::from_secs(180),
    );
    let row = |pid: &str| {
        wd.js(&format!(
            "return [...document.querySelectorAll('#worklist-body tr')]\
               .find((r) => r.innerText.includes('{pid}')).innerText;"
        ))
        .as_str()
        .unwrap()
        .to_string()
    };
    let adult_row = row("AP0000");
    assert!(
        adult_row.contains(&format!("Not applicable: {reason}")),
        "{adult_row}"
    );
    let unknown_row = row("UP0000");
    assert!(unknown_row.contains("caveat"), "{unknown_row}");
    wd.screenshot("worklist-intended-use.png");

    wd.js("[...document.querySelectorAll('#worklist-body tr')]
             .find((r) => r.innerText.includes('AP0000')).querySelector('a').click();");
    wd.wait_css("#not-applicable", 30);
    let note = wd.js("return document.querySelector('#not-applicable').innerText;");
    assert_eq!(
        note.as_str().unwrap(),
        format!("Not applicable: outside the model's intended use ({reason}). Not analysed.")
    );
    let side = wd.js("return document.querySelector('.side').innerText;");
    assert!(side.as_str().unwrap().contains("Not analysed."), "{side}");
    wd.screenshot("study-not-applicable.png");

    wd.go(&format!("{base}/#/worklist"));
    wd.wait_css("#worklist-body tr", 20);
    wd.js("[...document.querySelectorAll('#worklist-body tr')]
             .find((r) => r.innerText.includes('UP0000')).querySelector('a').click();");
    wd.wait_css("#caveat", 30);
    let caveat = wd.js("return document.querySelector('#caveat').innerText;");
    assert_eq!(
        caveat.as_str().unwrap(),
        "Caveat: patient age unknown: the model is intended for 1\u{2013}5 y"
    );
    // Analysed all the same: its finding is listed.
    assert_eq!(
        wd.js("return document.querySelectorAll('table.findings tbody tr').length;"),
        json!(1)
    );
    wd.screenshot("study-caveat.png");
}

/// Sends a copy of `file` as a new study (fresh study, series and instance UIDs) to the
/// daemon's DICOM port about once a second, until `stop` or for at most a minute.
fn send_fresh_studies(file: &std::path::Path, port: u16, stop: &std::sync::atomic::AtomicBool) {
    let dir = temp_dir("fresh-studies");
    let started = Instant::now();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed)
        && started.elapsed() < Duration::from_secs(60)
    {
        let copy = dir.path().join(format!("{n}.dcm"));
        std::fs::copy(file, &copy).unwrap();
        let mut modify = std::process::Command::new("dcmodify");
        modify.args(["-nb", "-gst", "-gse", "-gin"]).arg(&copy);
        run(&mut modify, Duration::from_secs(30)).assert_success("dcmodify");
        storescu("MODALITY", DULI_AET, port, &[], &[copy])
            .unwrap()
            .assert_success("storescu");
        n += 1;
        std::thread::sleep(Duration::from_millis(800));
    }
}

/// Automatic logoff clears the screen of a shared reading-room PC: once the server ends
/// an idle session, the page is back on the login form and no patient name or ID is left
/// in the document, from the worklist (its live event stream ends with the session; the
/// reloads after studies arriving meanwhile do not keep it alive) and from the study page
/// (the page's periodic session check).
#[test]
fn an_expired_session_clears_patient_data_off_the_screen() {
    let Some(driver_bin) = chromedriver() else {
        return;
    };
    let Some(files) = sample_dicoms("explicit-le") else {
        return;
    };
    if which("storescu").is_none() || which("dcmodify").is_none() {
        return skip("storescu or dcmodify absent");
    }
    let file = files[0].clone();
    let uid = study_uid_of(&file);
    let patient_id = dicom_attr(&file, dicom_dictionary_std::tags::PATIENT_ID);
    let name = dicom_attr(&file, dicom_dictionary_std::tags::PATIENT_NAME);
    let family = name.split('^').next().unwrap().to_string();
    assert!(
        !patient_id.is_empty() && !family.is_empty(),
        "{name} {patient_id}"
    );

    let d = Daemon::builder()
        .config("console", "session_idle_secs", "6")
        .start();
    d.add_user("rita", "radiologist", PW);
    d.add_user("theo", "technician", PW);
    d.storescu("MODALITY", &[], std::slice::from_ref(&file))
        .unwrap()
        .assert_success("storescu");
    let browser = Browser::start(&driver_bin);
    let wd = &browser.wd;
    let base = format!("https://127.0.0.1:{}", d.console_port);
    let shows = |text: &str| {
        wd.js(&format!(
            "return document.documentElement.outerHTML.includes({text:?}) || document.body.innerText.includes({text:?});"
        )) == json!(true)
    };
    let signed_out = |what: &str, secs: u64| {
        wd.wait_for(
            what,
            "location.hash === '#/login' && document.querySelector('#login-form')",
            Duration::from_secs(secs),
        );
        for text in [&patient_id, &family] {
            assert!(!shows(text), "{what}: {text:?} still in the page");
        }
    };

    // The worklist, left alone while studies keep arriving: each arrival reloads it (a
    // request the page makes on its own, not the user's), and the session still idles out.
    log_in(wd, &base, "rita", "#/worklist");
    wd.wait_css(&format!("#worklist-body tr[data-study=\"{uid}\"]"), 20);
    assert!(
        shows(&patient_id) && shows(&family),
        "worklist without the patient"
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| send_fresh_studies(&file, d.dicom_port, &stop));
        wd.wait_for(
            "a study that arrived while the worklist was open",
            "document.querySelectorAll('#worklist-body tr').length > 1",
            Duration::from_secs(20),
        );
        signed_out("logoff from the worklist while studies arrive", 30);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });

    // The study page, which has no event stream.
    let open_study = || {
        log_in(wd, &base, "rita", "#/worklist");
        wd.click(&format!("#worklist-body tr[data-study=\"{uid}\"] a"));
        wd.wait_for(
            "rendered image",
            "document.querySelector('#image') && document.querySelector('#image').dataset.rendered === 'true'",
            Duration::from_secs(30),
        );
        assert!(shows(&family), "study page without the patient");
    };
    open_study();
    signed_out("logoff from the study page", 40);

    // Another user logs in on the same browser (another tab of a shared reading-room PC):
    // the cookie is now theirs, and the page left open must not go on showing the
    // patient under the name of the one who left.
    open_study();
    // The other tab stays in use (its user's requests keep the session live, which the
    // 6 s idle limit of this daemon would otherwise end before the page's next check).
    wd.js(&format!(
        "fetch('/api/v1/login', {{method: 'POST', credentials: 'same-origin', \
         headers: {{'Content-Type': 'application/json'}}, \
         body: JSON.stringify({{username: 'theo', password: {PW:?}}})}}) \
         .then(() => setInterval(() => fetch('/api/v1/me', {{credentials: 'same-origin'}}), 1000)); \
         return true;"
    ));
    signed_out("another user's login in this browser", 30);
}
