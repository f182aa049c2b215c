//! The console end to end in headless Chromium, driven through chromedriver's WebDriver
//! HTTP API: log in, see a study that `storescu` just sent appear in the worklist without
//! reloading, open it, check the 16-bit image renders and window/level follows a drag,
//! toggle the heatmap, give feedback, log out. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/console-screenshots/`.

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
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(file).unwrap();
    obj.element(tags::STUDY_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_string()
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
    wd.go(&format!("{base}/#/login"));
    wd.wait_for(
        "login form",
        "document.querySelector('#login-form')",
        Duration::from_secs(20),
    );
    wd.type_into("#username", "rita");
    wd.type_into("#password", PW);
    wd.click("#login-form button[type=submit]");
    wd.wait_for(
        "live worklist",
        "location.hash === '#/worklist' && document.querySelector('#live.on')",
        Duration::from_secs(20),
    );
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

    // Log out: back to the login form, and the API refuses the old session.
    wd.click("#logout");
    wd.wait_for(
        "login form",
        "document.querySelector('#login-form')",
        Duration::from_secs(10),
    );
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
