//! `duli provision`, `duli provision --check` and `duli diagnostics` as a technician runs
//! them: the documented example file applied to a temporary configuration folder, each kind
//! of bad input refused with nothing changed on disk, connectivity against a daemon and
//! peers started here and against closed ports, a support bundle free of secrets, and the
//! daemon creating the provisioned first administrator at its first start.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The site secret on the stick, in the form `generate_site_secret` writes (64 hex digits).
const SECRET: &str = "5173c0ffee0fa11ed5ec12e7000000000000000000000000ba5eba11deadbeef";
const PASSWORD: &str = "correct-horse-battery-9";

/// Runs `duli ARGS` without configuration from the environment.
fn duli(args: &[&str]) -> ToolOutput {
    duli_at(&Daemon::binary(), args)
}

/// `duli` run from `binary`.
fn duli_at(binary: &Path, args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new(binary);
    for (key, _) in std::env::vars() {
        if key.starts_with("DULI_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args);
    run(&mut cmd, Duration::from_secs(120))
}

/// The harness's PKI (one per stick); certificates and keys as PEM text.
fn pki(dir: &std::path::Path) -> TestPki {
    fs::create_dir_all(dir).unwrap();
    TestPki::generate(dir, "stick").expect("openssl (scripts/setup-test-env.sh installs it)")
}

fn pem(path: &std::path::Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// A technician's USB stick: the example provisioning file with its certificates, keys
/// and site secret, plus an empty box (config folder, system root, data folder).
struct Stick {
    dir: TestDir,
}

impl Stick {
    fn new() -> Stick {
        let s = Stick {
            dir: temp_dir("provision"),
        };
        let usb = s.usb();
        fs::create_dir_all(usb.join("certs")).unwrap();
        fs::create_dir_all(usb.join("secrets")).unwrap();
        fs::create_dir_all(s.path("box/etc")).unwrap();
        fs::create_dir_all(s.path("box/root")).unwrap();
        let pki = pki(&s.path("pki"));
        for (name, cert, key) in [
            ("dicom", &pki.server_cert, &pki.server_key),
            ("mqtt-client", &pki.client_cert, &pki.client_key),
            ("console", &pki.server_cert, &pki.server_key),
        ] {
            fs::write(usb.join(format!("certs/{name}.pem")), pem(cert)).unwrap();
            fs::write(usb.join(format!("certs/{name}.key")), pem(key)).unwrap();
        }
        for name in ["dicom-ca", "mqtt-ca"] {
            fs::write(usb.join(format!("certs/{name}.pem")), pem(&pki.ca_cert)).unwrap();
        }
        fs::write(usb.join("secrets/site_secret"), format!("{SECRET}\n")).unwrap();
        let example =
            fs::read_to_string(repo_root().join("config/provision.example.toml")).unwrap();
        let text = example.replace(
            "name = \"admin\"",
            &format!("name = \"admin\"\npassword = \"{PASSWORD}\""),
        );
        assert_ne!(text, example, "the example names an [admin]");
        fs::write(s.file(), text).unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn usb(&self) -> PathBuf {
        self.path("usb")
    }

    fn file(&self) -> PathBuf {
        self.usb().join("hospital-a.toml")
    }

    fn config(&self) -> PathBuf {
        self.path("box/etc/duli.toml")
    }

    fn provision(&self, extra: &[&str]) -> ToolOutput {
        self.provision_from(&Daemon::binary(), extra)
    }

    /// [`Stick::provision`] with `binary` as the `duli` that runs.
    fn provision_from(&self, binary: &Path, extra: &[&str]) -> ToolOutput {
        let file = self.file();
        let config = self.config();
        let root = self.path("box/root");
        let data = self.path("box/data");
        let mut args = vec![
            "provision",
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--system-root",
            root.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        duli_at(binary, &args)
    }

    /// Every file under the box with its mode and content, to prove nothing changed.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        self.snapshot_except(None)
    }

    /// [`Stick::snapshot`] without the folder `skip` (a store a daemon writes to).
    fn snapshot_except(&self, skip: Option<&Path>) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.path("box")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if Some(p.as_path()) == skip {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p.clone());
                    out.insert(p, (m.mode(), Vec::new()));
                } else if m.file_type().is_symlink() {
                    let target = fs::read_link(&p).unwrap();
                    out.insert(p, (m.mode(), target.display().to_string().into_bytes()));
                } else {
                    out.insert(p.clone(), (m.mode(), fs::read(&p).unwrap()));
                }
            }
        }
        out
    }

    /// Strings that must never be printed or bundled: the secret, the password, and the
    /// body lines of every private key.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![SECRET.to_string(), PASSWORD.to_string()];
        for name in ["dicom", "mqtt-client", "console"] {
            let key = fs::read_to_string(self.usb().join(format!("certs/{name}.key"))).unwrap();
            s.extend(
                key.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() > 20)
                    .map(String::from),
            );
        }
        s
    }

    fn assert_no_secret(&self, text: &str, what: &str) {
        for s in self.secrets() {
            assert!(!text.contains(&s), "{what} contains a secret ({s:.8}...)");
        }
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn example_file_provisions_a_box() {
    let s = Stick::new();
    let owner = if nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .is_some()
        && nix::unistd::geteuid().is_root()
    {
        "nobody"
    } else {
        "duli"
    };
    // Run as root, the binary sits where the owner cannot reach it (as in a checkout under
    // /root or a home folder): what runs as the owner must not need its path.
    let binary = if owner == "nobody" {
        let hidden = s.path("root-only");
        fs::create_dir(&hidden).unwrap();
        fs::set_permissions(&hidden, fs::Permissions::from_mode(0o700)).unwrap();
        let copy = hidden.join("duli");
        if fs::hard_link(Daemon::binary(), &copy).is_err() {
            fs::copy(Daemon::binary(), &copy).unwrap();
        }
        copy
    } else {
        Daemon::binary()
    };
    // Private files go to the configured service user only: this box names it.
    if owner == "nobody" {
        fs::write(s.config(), "[device]\nservice_user = \"nobody\"\n").unwrap();
    }
    let out = s.provision_from(&binary, &["--owner", owner]);
    out.assert_success("duli provision");
    s.assert_no_secret(&out.combined(), "provision output");
    assert!(
        out.stdout
            .contains("provisioned site hospital-a device edge-01"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("duli user add admin --role admin"),
        "{}",
        out.stdout
    );

    // The written configuration is valid on its own and points at the copies.
    let check = duli(&["check-config", "--config", s.config().to_str().unwrap()]);
    check.assert_success("check-config of the provisioned file");
    let written = fs::read_to_string(s.config()).unwrap();
    assert!(written.contains("DULI_HA_01"), "{written}");
    assert!(
        !written.contains("/usb/"),
        "config points at the stick: {written}"
    );
    s.assert_no_secret(&written, "duli.toml");
    let etc = s.path("box/etc");
    for key in [
        "tls/dicom.key",
        "tls/mqtt.key",
        "tls/console.key",
        "site_secret",
        "pending-admin.toml",
    ] {
        assert_eq!(mode(&etc.join(key)), 0o600, "{key}");
    }
    for cert in [
        "tls/dicom.pem",
        "tls/dicom-ca.pem",
        "tls/mqtt.pem",
        "tls/mqtt-ca.pem",
        "tls/console.pem",
        "duli.toml",
    ] {
        assert_eq!(mode(&etc.join(cert)), 0o644, "{cert}");
    }
    assert_eq!(
        fs::read(etc.join("tls/dicom.key")).unwrap(),
        fs::read(s.usb().join("certs/dicom.key")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(etc.join("site_secret")).unwrap().trim(),
        SECRET
    );
    if owner == "nobody" {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        for key in ["tls/dicom.key", "site_secret"] {
            assert_eq!(
                fs::metadata(etc.join(key)).unwrap().uid(),
                nobody.uid.as_raw(),
                "{key}"
            );
        }
        // Public files stay with the invoking user.
        assert_eq!(fs::metadata(etc.join("duli.toml")).unwrap().uid(), 0);
    }
    let pending = fs::read_to_string(etc.join("pending-admin.toml")).unwrap();
    assert!(pending.contains("name = \"admin\""), "{pending}");
    // Only the password's hash waits on the box, in the accounts' format.
    s.assert_no_secret(&pending, "pending-admin.toml");
    assert!(pending.contains("pbkdf2-sha256"), "{pending}");
    assert!(
        out.stdout.contains("hold secrets") && out.stdout.contains("wipe the medium"),
        "{}",
        out.stdout
    );

    // System files: NTP drop-in and time zone.
    let root = s.path("box/root");
    let ntp = fs::read_to_string(root.join("etc/systemd/timesyncd.conf.d/duli.conf")).unwrap();
    assert!(
        ntp.contains("NTP=ntp1.hospital-a.local 10.10.0.1\n"),
        "{ntp}"
    );
    assert_eq!(
        fs::read_link(root.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/America/Sao_Paulo")
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/timezone")).unwrap(),
        "America/Sao_Paulo\n"
    );

    // The audit trail records the provisioning (without secrets).
    let store = duli::store::Store::open(&s.path("box/data")).unwrap();
    let audit = duli::audit::Audit::open(&store).unwrap();
    let records = audit.records(0, 100).unwrap();
    let rec = records
        .iter()
        .find(|r| r.action == duli::audit::Action::ConfigChange)
        .expect("a config_change record");
    assert!(rec.detail.contains("hospital-a"), "{}", rec.detail);
    s.assert_no_secret(&rec.detail, "audit record");
    drop(audit);
    drop(store);

    // Provisioning again with the same file is idempotent and still valid.
    s.provision(&["--owner", owner])
        .assert_success("second provision");

    // The support bundle: expected files, no secret values.
    let bundle = s.path("support.tar.gz");
    let out = duli(&[
        "diagnostics",
        "--config",
        s.config().to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    out.assert_success("duli diagnostics");
    assert_eq!(mode(&bundle), 0o600);
    let Some(tar) = require_tool("tar") else {
        return;
    };
    let unpacked = s.path("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    let x = run(
        Command::new(tar)
            .arg("-xzf")
            .arg(&bundle)
            .arg("-C")
            .arg(&unpacked),
        Duration::from_secs(30),
    );
    x.assert_success("tar -xzf");
    let root = unpacked.join("duli-diagnostics");
    for name in [
        "versions.txt",
        "config.toml",
        "firmware.txt",
        "store.json",
        "disk.txt",
        "logs.txt",
        "config-files.txt",
    ] {
        let text = fs::read_to_string(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.assert_no_secret(&text, name);
    }
    let versions = fs::read_to_string(root.join("versions.txt")).unwrap();
    assert!(
        versions.contains(&format!("duli {}", env!("CARGO_PKG_VERSION"))),
        "{versions}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join("store.json")).unwrap()).unwrap();
    assert_eq!(stats["daemon_running"], false);
    assert_eq!(stats["status"]["instances"], 0, "{stats}");
    assert!(stats["audit"]["records"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["audit"]["intact"], true);
    let config = fs::read_to_string(root.join("config.toml")).unwrap();
    assert!(config.contains("site_id = \"hospital-a\""), "{config}");
    let files = fs::read_to_string(root.join("config-files.txt")).unwrap();
    assert!(
        files.contains("600") && files.contains("tls/dicom.key"),
        "{files}"
    );
    assert!(fs::read_to_string(root.join("disk.txt"))
        .unwrap()
        .contains("GB available"));
}

/// DICOM TLS files of each `[[pacs.destinations]]`, given relative to the provisioning
/// file, are copied into tls/ like every other certificate and key (keys 0600), and the
/// written configuration points at the copies, valid whatever the working directory.
#[test]
fn pacs_tls_files_are_copied_for_every_destination() {
    let s = Stick::new();
    let usb = s.usb();
    for (name, file) in [
        ("stick-ca.pem", "certs/pacs-ca.pem"),
        ("stick-client.pem", "certs/pacs-client.pem"),
        ("stick-client.key", "certs/pacs-client.key"),
        ("stick-ca.pem", "certs/archive-ca.pem"),
    ] {
        fs::copy(s.path("pki").join(name), usb.join(file)).unwrap();
    }
    let text = fs::read_to_string(s.file()).unwrap();
    let with_tls = text.replace(
        "push = true\nmove = true\n",
        "push = true\nmove = true\ntls = true\ntls_ca = \"certs/pacs-ca.pem\"\n\
         tls_cert = \"certs/pacs-client.pem\"\ntls_key = \"certs/pacs-client.key\"\n\n\
         [[pacs.destinations]]\nname = \"archive\"\nae_title = \"ARCHIVE\"\n\
         host = \"10.10.1.6\"\nport = 2762\nmove = true\ntls = true\n\
         tls_ca = \"certs/archive-ca.pem\"\n",
    );
    assert_ne!(with_tls, text, "the example has a PACS destination");
    fs::write(s.file(), with_tls).unwrap();

    // Run from a folder that is neither the stick's nor the box's.
    let elsewhere = s.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let (file, config) = (s.file(), s.config());
    let (root, data) = (s.path("box/root"), s.path("box/data"));
    let mut cmd = Command::new(Daemon::binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("DULI_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(&elsewhere)
        .arg("provision")
        .arg(&file)
        .arg("--config")
        .arg(&config)
        .arg("--system-root")
        .arg(&root)
        .arg("--data-dir")
        .arg(&data);
    run(&mut cmd, Duration::from_secs(120)).assert_success("duli provision");

    let tls = s.path("box/etc/tls");
    for (copy, source, private) in [
        ("pacs-0-ca.pem", "certs/pacs-ca.pem", false),
        ("pacs-0.pem", "certs/pacs-client.pem", false),
        ("pacs-0.key", "certs/pacs-client.key", true),
        ("pacs-1-ca.pem", "certs/archive-ca.pem", false),
    ] {
        assert_eq!(
            fs::read(tls.join(copy)).unwrap_or_default(),
            fs::read(usb.join(source)).unwrap(),
            "{copy}"
        );
        assert_eq!(
            mode(&tls.join(copy)),
            if private { 0o600 } else { 0o644 },
            "{copy}"
        );
    }
    assert!(!tls.join("pacs-1.key").exists());
    let written = fs::read_to_string(&config).unwrap();
    assert!(
        !written.contains("/usb/") && !written.contains("\"certs/"),
        "config points at the stick: {written}"
    );
    let cfg = duli::config::Config::load(Some(&config), Vec::new())
        .unwrap_or_else(|e| panic!("the provisioned configuration is refused: {e}"));
    let d = &cfg.pacs.destinations;
    assert_eq!(
        d[0].tls_ca.as_deref(),
        Some(tls.join("pacs-0-ca.pem").as_path())
    );
    assert_eq!(
        d[0].tls_cert.as_deref(),
        Some(tls.join("pacs-0.pem").as_path())
    );
    assert_eq!(
        d[0].tls_key.as_deref(),
        Some(tls.join("pacs-0.key").as_path())
    );
    assert_eq!(
        d[1].tls_ca.as_deref(),
        Some(tls.join("pacs-1-ca.pem").as_path())
    );
    assert_eq!(d[1].tls_key, None);
    // The daemon's own check, from yet another folder.
    let mut check = Command::new(Daemon::binary());
    check
        .current_dir("/")
        .args(["check-config", "--config"])
        .arg(&config);
    run(&mut check, Duration::from_secs(60)).assert_success("check-config from /");
}

#[test]
fn bad_input_is_refused_naming_the_key_and_nothing_changes() {
    let s = Stick::new();
    // A box provisioned once already: a refused second run must leave it as it is.
    s.provision(&[]).assert_success("first provision");
    let good = fs::read_to_string(s.file()).unwrap();
    // A key of another certificate (the stick's client key).
    let other_key = pem(&s.path("pki/stick-client.key"));

    type Breaker = Box<dyn Fn(&Stick)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "missing key",
            Box::new(|s: &Stick| {
                let t = fs::read_to_string(s.file()).unwrap();
                fs::write(s.file(), t.replace("site_id = \"hospital-a\"\n", "")).unwrap();
            }),
            "device.site_id",
        ),
        (
            "unknown field",
            Box::new(|s: &Stick| {
                let t = fs::read_to_string(s.file()).unwrap();
                fs::write(
                    s.file(),
                    t.replace("port = 104\n", "port = 104\nae_titel = \"X\"\n"),
                )
                .unwrap();
            }),
            "ae_titel",
        ),
        (
            "unknown field in a provisioning section",
            Box::new(|s: &Stick| {
                let t = fs::read_to_string(s.file()).unwrap();
                fs::write(s.file(), t.replace("[time]\n", "[time]\nzone = \"UTC\"\n")).unwrap();
            }),
            "zone",
        ),
        (
            "malformed certificate",
            Box::new(|s: &Stick| {
                let p = s.usb().join("certs/dicom.pem");
                let t = fs::read_to_string(&p).unwrap();
                let mut lines: Vec<String> = t.lines().map(String::from).collect();
                lines[2] = "B".repeat(lines[2].len());
                fs::write(&p, lines.join("\n")).unwrap();
            }),
            "dicom.cert",
        ),
        (
            "key that does not match the certificate",
            Box::new(move |s: &Stick| {
                fs::write(s.usb().join("certs/mqtt-client.key"), &other_key).unwrap();
            }),
            "mqtt.key",
        ),
        (
            "missing certificate file",
            Box::new(|s: &Stick| {
                fs::remove_file(s.usb().join("certs/console.pem")).unwrap();
            }),
            "console.cert",
        ),
        (
            "invalid value",
            Box::new(|s: &Stick| {
                let t = fs::read_to_string(s.file()).unwrap();
                fs::write(
                    s.file(),
                    t.replace(
                        "ae_title = \"DULI_HA_01\"",
                        "ae_title = \"THIS_AE_TITLE_IS_TOO_LONG\"",
                    ),
                )
                .unwrap();
            }),
            "dicom.ae_title",
        ),
        (
            "empty allow-list on a network address",
            Box::new(|s: &Stick| {
                let mut t = fs::read_to_string(s.file()).unwrap();
                let start = t.find("allowed_peers = [").unwrap();
                let end = start + t[start..].find("\n]\n").unwrap() + 3;
                t.replace_range(start..end, "allowed_peers = []\n");
                assert!(t.contains("bind = \"0.0.0.0\""));
                fs::write(s.file(), t).unwrap();
            }),
            "dicom.allow_any_peer",
        ),
        (
            "unknown time zone",
            Box::new(|s: &Stick| {
                let t = fs::read_to_string(s.file()).unwrap();
                fs::write(
                    s.file(),
                    t.replace("America/Sao_Paulo", "Mars/Olympus_Mons"),
                )
                .unwrap();
            }),
            "time.timezone",
        ),
        (
            "forged firmware key endorsement",
            Box::new(|s: &Stick| {
                let t = fs::read_to_string(s.file()).unwrap();
                let e = serde_json::json!({"format": 1, "key": "11".repeat(32), "label": "x",
                    "endorser": "0011223344556677", "signature": "22".repeat(64)});
                fs::write(s.usb().join("forged.endorsement.json"), e.to_string()).unwrap();
                fs::write(
                    s.file(),
                    t.replace(
                        "endorsements = []",
                        "endorsements = [\"forged.endorsement.json\"]",
                    ),
                )
                .unwrap();
            }),
            "firmware.endorsements[0]",
        ),
    ];
    for (what, breaker, key) in cases {
        // Restore the stick, then break one thing.
        let fresh = Stick::new();
        for name in ["dicom", "mqtt-client", "console"] {
            for ext in ["pem", "key"] {
                let rel = format!("certs/{name}.{ext}");
                fs::copy(fresh.usb().join(&rel), s.usb().join(&rel)).unwrap();
            }
        }
        fs::write(s.file(), &good).unwrap();
        let _ = fs::remove_file(s.usb().join("forged.endorsement.json"));
        // The refused run must not change the box provisioned with the old material.
        breaker(&s);
        assert_refused(&s, what, &[], key);
    }
}

/// Runs one refused provisioning of the stick: exit 2, the error names `key`, says
/// nothing was written, prints no secret, and the box is as it was.
fn assert_refused(s: &Stick, what: &str, extra: &[&str], key: &str) {
    let before = s.snapshot();
    let started = std::time::Instant::now();
    let out = s.provision(extra);
    assert_eq!(out.code(), Some(2), "{what}: {}", out.combined());
    assert!(
        out.stderr.contains(key),
        "{what}: error does not name {key}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("nothing was written"),
        "{what}: {}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(60), "{what}: slow");
    s.assert_no_secret(&out.combined(), what);
    assert_eq!(before, s.snapshot(), "{what}: the box changed");
}

/// Provisioning runs as root: the files a provisioning file names are read only from the
/// provisioning folder (no absolute path, no '..', no symbolic link, no FIFO), the site
/// secret only in its documented form, private copies go only to the configured service
/// user, and a relative data folder is refused rather than resolved against the working
/// directory.
#[test]
fn files_outside_the_stick_and_foreign_owners_are_refused() {
    let s = Stick::new();
    s.provision(&[]).assert_success("first provision");
    let good = fs::read_to_string(s.file()).unwrap();
    // A root-only file outside the stick, shaped like a secret and like a key.
    let outside = s.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "ab".repeat(32)).unwrap();
    fs::copy(s.path("pki/stick-client.key"), outside.join("client.key")).unwrap();
    let usb = s.usb();
    std::os::unix::fs::symlink(outside.join("secret"), usb.join("secrets/link")).unwrap();
    std::os::unix::fs::symlink(&outside, usb.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(outside.join("client.key"), usb.join("certs/link.key")).unwrap();
    nix::unistd::mkfifo(
        &usb.join("secrets/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::write(usb.join("secrets/weak"), "not-a-secret-but-long-enough\n").unwrap();
    let secret_file = |name: &str| {
        good.replace(
            "site_secret_file = \"secrets/site_secret\"",
            &format!("site_secret_file = {name:?}"),
        )
    };
    let abs = outside.join("secret").display().to_string();
    for (what, text, key) in [
        (
            "absolute secret path",
            secret_file(&abs),
            "device.site_secret_file",
        ),
        (
            "secret through a link",
            secret_file("secrets/link"),
            "device.site_secret_file",
        ),
        (
            "secret in a linked folder",
            secret_file("elsewhere/secret"),
            "device.site_secret_file",
        ),
        (
            "secret above the stick",
            secret_file("../outside/secret"),
            "device.site_secret_file",
        ),
        (
            "secret that is a FIFO",
            secret_file("secrets/fifo"),
            "device.site_secret_file",
        ),
        (
            "secret not in its form",
            secret_file("secrets/weak"),
            "device.site_secret_file",
        ),
        (
            "key through a link",
            good.replace("key = \"certs/dicom.key\"", "key = \"certs/link.key\""),
            "dicom.key",
        ),
        (
            "relative data folder",
            good.replace("# data_dir = \"/var/lib/duli\"", "data_dir = \"var/duli\""),
            "device.data_dir",
        ),
    ] {
        assert_ne!(text, good, "{what}: the example changed");
        fs::write(s.file(), &text).unwrap();
        // The stick's file names its own data folder: no --data-dir.
        let before = s.snapshot();
        let out = duli(&[
            "provision",
            s.file().to_str().unwrap(),
            "--config",
            s.config().to_str().unwrap(),
            "--system-root",
            s.path("box/root").to_str().unwrap(),
        ]);
        assert_eq!(out.code(), Some(2), "{what}: {}", out.combined());
        assert!(
            out.stderr.contains(key),
            "{what}: no {key}:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("nothing was written"),
            "{what}: {}",
            out.stderr
        );
        assert!(!out.combined().contains(&"ab".repeat(32)), "{what}");
        assert_eq!(before, s.snapshot(), "{what}: the box changed");
    }
    fs::write(s.file(), &good).unwrap();
    assert_refused(&s, "another owner", &["--owner", "nobody"], "--owner");
    // The stick's file names no data folder: only the relative flag.
    let before = s.snapshot();
    let out = duli(&[
        "provision",
        s.file().to_str().unwrap(),
        "--config",
        s.config().to_str().unwrap(),
        "--system-root",
        s.path("box/root").to_str().unwrap(),
        "--data-dir",
        "data",
    ]);
    assert_eq!(out.code(), Some(2), "{}", out.combined());
    assert!(out.stderr.contains("device.data_dir"), "{}", out.stderr);
    assert_eq!(before, s.snapshot(), "relative --data-dir: the box changed");
    if nix::unistd::geteuid().is_root() {
        // A configuration folder another account may change.
        let theirs = s.path("theirs");
        fs::create_dir_all(&theirs).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        nix::unistd::chown(&theirs, Some(nobody.uid), Some(nobody.gid)).unwrap();
        let out = s.provision(&["--config", theirs.join("duli.toml").to_str().unwrap()]);
        assert_eq!(out.code(), Some(2), "{}", out.combined());
        assert!(out.stderr.contains("--config"), "{}", out.stderr);
        assert!(!theirs.join("duli.toml").exists());
    }
}

/// A provisioning file that brings only a key (or only a certificate) for a section whose
/// other half is configured already is checked against that configured half.
#[test]
fn a_key_alone_must_match_the_configured_certificate() {
    let s = Stick::new();
    s.provision(&[]).assert_success("first provision");
    let good = fs::read_to_string(s.file()).unwrap();
    let key_only = good.replace("cert = \"certs/mqtt-client.pem\"\n", "");
    assert_ne!(key_only, good);
    fs::write(s.file(), &key_only).unwrap();
    s.provision(&[]).assert_success("the same key alone");
    fs::copy(
        s.path("pki/stick-ca.key"),
        s.usb().join("certs/mqtt-client.key"),
    )
    .unwrap();
    assert_refused(&s, "another key alone", &[], "mqtt.key");
    // A certificate alone against the configured key.
    fs::copy(
        s.path("pki/stick-server.pem"),
        s.usb().join("certs/mqtt-client.pem"),
    )
    .unwrap();
    let cert_only = good.replace("key = \"certs/mqtt-client.key\"\n", "");
    assert_ne!(cert_only, good);
    fs::write(s.file(), &cert_only).unwrap();
    assert_refused(&s, "another certificate alone", &[], "mqtt.cert");
}

/// `generate_site_secret = true` on a box that has a site secret keeps it where the box
/// keeps it: in its data folder (where the daemon made one at its first start), or where
/// its configuration names it. A new secret in the configuration folder would change
/// every pseudonym and result UID the box makes.
#[test]
fn generating_a_site_secret_keeps_the_one_the_box_has() {
    let s = Stick::new();
    let generate = fs::read_to_string(s.file()).unwrap().replace(
        "site_secret_file = \"secrets/site_secret\"",
        "generate_site_secret = true",
    );
    fs::write(s.file(), generate).unwrap();
    let (data, etc) = (s.path("box/data"), s.path("box/etc"));
    // Provisions over a box configured with `device` (its data folder added); the site
    // secret the written configuration names.
    let provision_over = |device: &str| {
        let config = format!("[device]\ndata_dir = \"{}\"\n{device}", data.display());
        fs::write(s.config(), config).unwrap();
        s.provision(&[])
            .assert_success("provision generating a secret");
        let cfg = duli::config::Config::load(Some(&s.config()), std::iter::empty()).unwrap();
        cfg.site_secret_path()
    };
    // The daemon's own secret in its data folder.
    fs::create_dir_all(&data).unwrap();
    let daemons = [7u8; 32];
    fs::write(data.join("site_secret"), daemons).unwrap();
    assert_eq!(provision_over(""), data.join("site_secret"));
    assert!(!etc.join("site_secret").exists(), "a second secret");
    assert_eq!(fs::read(data.join("site_secret")).unwrap(), daemons);
    // A secret the configuration names elsewhere (relative to its folder).
    fs::create_dir_all(etc.join("keys")).unwrap();
    fs::write(etc.join("keys/secret"), "ab".repeat(32)).unwrap();
    let named = provision_over("site_secret = \"keys/secret\"\n");
    assert_eq!(named, etc.join("keys/secret"));
    assert!(!etc.join("site_secret").exists(), "a second secret");
    assert_eq!(
        fs::read_to_string(etc.join("keys/secret")).unwrap(),
        "ab".repeat(32)
    );
    // A secret the daemon could not use (too short): refused, named, not replaced.
    fs::write(data.join("site_secret"), b"tiny").unwrap();
    fs::write(
        s.config(),
        format!("[device]\ndata_dir = \"{}\"\n", data.display()),
    )
    .unwrap();
    let out = s.provision(&[]);
    assert!(!out.success(), "{}", out.combined());
    assert!(
        out.combined().contains("cannot be used") && out.combined().contains("site_secret"),
        "{}",
        out.combined()
    );
    assert_eq!(fs::read(data.join("site_secret")).unwrap(), b"tiny");
    // Root reads the service user's file: a FIFO (which would block it) or a link (to a
    // file of root's, or an endless device) is refused at once, not read.
    type Plant = fn(&std::path::Path);
    let plants: [(&str, Plant); 2] = [
        ("a FIFO", |p| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
        }),
        ("a link to /dev/zero", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
    ];
    for (what, plant) in plants {
        fs::remove_file(data.join("site_secret")).unwrap();
        plant(&data.join("site_secret"));
        let started = std::time::Instant::now();
        let out = s.provision(&[]);
        assert!(!out.success(), "{what}: {}", out.combined());
        assert!(
            out.combined().contains("cannot be used"),
            "{what}: {}",
            out.combined()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{what}"
        );
    }
    // A box without one gets one, in the configuration folder.
    fs::remove_file(data.join("site_secret")).unwrap();
    assert_eq!(provision_over(""), etc.join("site_secret"));
    let made = fs::read_to_string(etc.join("site_secret")).unwrap();
    assert_eq!(made.trim().len(), 64, "{made:?}");
}

/// The configuration is checked as the daemon will load it: a relative path already in
/// it resolves against the configuration's folder, not the folder provisioning runs in
/// (a CA file beside the configuration was refused as missing).
#[test]
fn relative_paths_of_the_configuration_are_checked_from_its_folder() {
    let s = Stick::new();
    let etc = s.path("box/etc");
    fs::create_dir_all(etc.join("tls")).unwrap();
    fs::copy(s.path("pki/stick-ca.pem"), etc.join("tls/audit-ca.pem")).unwrap();
    fs::write(
        s.config(),
        "[audit]\nsyslog = \"127.0.0.1:6514\"\nsyslog_tls = true\nsyslog_ca = \"tls/audit-ca.pem\"\n",
    )
    .unwrap();
    assert!(!Path::new("tls/audit-ca.pem").exists());
    s.provision(&[])
        .assert_success("provision over a relative CA path");
    let check = duli(&["check-config", "--config", s.config().to_str().unwrap()]);
    check.assert_success("check-config of the provisioned file");
    // A relative path that is missing beside the configuration is refused, naming it.
    fs::remove_file(etc.join("tls/audit-ca.pem")).unwrap();
    assert_refused(&s, "a missing relative CA", &[], "audit.syslog_ca");
}

/// A config file for `--check` against the given ports.
fn check_config(
    dir: &Path,
    dicom_port: u16,
    pacs_port: u16,
    hl7_port: u16,
    mqtt_port: Option<u16>,
) -> PathBuf {
    let path = dir.join(format!("check-{pacs_port}-{hl7_port}.toml"));
    let mqtt = match mqtt_port {
        Some(p) => {
            format!("[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {p}\ntls = false\n")
        }
        None => String::new(),
    };
    fs::write(
        &path,
        format!(
            "[device]\ndata_dir = \"{}\"\n[dicom]\nport = {dicom_port}\n\
             [[pacs.destinations]]\nname = \"pacs\"\nae_title = \"DULI\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
             push = true\nstorage_commitment = true\n\
             [hl7]\nenabled = true\nhost = \"127.0.0.1\"\nport = {hl7_port}\n{mqtt}",
            dir.join("check-data").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_passes_against_live_peers_and_fails_on_closed_ports() {
    let daemon = Daemon::start();
    let dir = temp_dir("check");
    // An MLLP listener: accepting the connection is what the check needs.
    let ris = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ris_port = ris.local_addr().unwrap().port();
    // A real MQTT broker when mosquitto is installed.
    let mqtt = Mosquitto::start();
    let mqtt_port = mqtt.as_ref().map(|m| m.port);

    let cfg = check_config(
        dir.path(),
        daemon.dicom_port,
        daemon.dicom_port,
        ris_port,
        mqtt_port,
    );
    let out = duli(&["provision", "--check", "--config", cfg.to_str().unwrap()]);
    assert!(out.success(), "{}", out.combined());
    let table = &out.stdout;
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{table}"))
            .to_string()
    };
    assert!(row("DICOM echo (this box)").contains("PASS"), "{table}");
    assert!(row("DICOM echo pacs").contains("PASS"), "{table}");
    // The destination asks for Storage Commitment: its context is proposed and accepted.
    assert!(
        row("DICOM Storage Commitment pacs").contains("context accepted"),
        "{table}"
    );
    assert!(row("HL7 MLLP").contains("PASS"), "{table}");
    if mqtt_port.is_some() {
        assert!(row("MQTT connect").contains("PASS"), "{table}");
        assert!(row("MQTT connect").contains("CONNACK accepted"), "{table}");
    }
    assert!(
        row("clock sync").contains("PASS")
            || row("clock sync").contains("WARN")
            || row("clock sync").contains("FAIL")
    );
    assert!(
        table.contains("all checks passed") || row("clock sync").contains("FAIL"),
        "{table}"
    );

    // Closed ports: the PACS and the RIS fail, the exit code says so.
    let closed = free_port();
    drop(ris);
    let mqtt_closed = mqtt_port.map(|_| free_port());
    let cfg = check_config(dir.path(), daemon.dicom_port, closed, ris_port, mqtt_closed);
    let out = duli(&[
        "provision",
        "--check",
        "--config",
        cfg.to_str().unwrap(),
        "--timeout",
        "3",
    ]);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    let table = &out.stdout;
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("DICOM echo (this box)").contains("PASS"), "{table}");
    assert!(row("DICOM echo pacs").contains("FAIL"), "{table}");
    assert!(
        row("DICOM Storage Commitment pacs").contains("FAIL"),
        "{table}"
    );
    assert!(row("HL7 MLLP").contains("FAIL"), "{table}");
    if mqtt_closed.is_some() {
        assert!(row("MQTT connect").contains("FAIL"), "{table}");
    }
    assert!(table.contains("FAILED"), "{table}");
}

/// The daemon on the stick's provisioned configuration, on loopback test ports and without
/// its peers.
fn start_provisioned(s: &Stick) -> Daemon {
    Daemon::builder()
        .arg("--config")
        .arg(s.config().to_str().unwrap())
        .data_dir(&s.path("box/data"))
        .config("dicom", "tls", "false")
        .config("dicom", "allowed_peers", "[]")
        .config("mqtt", "enabled", "false")
        .config("hl7", "enabled", "false")
        .start()
}

#[test]
fn the_daemon_creates_the_provisioned_admin_at_its_first_start() {
    let s = Stick::new();
    s.provision(&["--owner", "duli"])
        .assert_success("duli provision");
    let pending = s.path("box/etc/pending-admin.toml");
    assert!(pending.exists());
    let d = start_provisioned(&s);
    assert!(!pending.exists(), "the initial password is not kept");
    assert!(!s.path("box/data/console/setup-code").exists());
    let setup = d.http_get("/api/v1/setup").unwrap().json();
    assert_eq!(setup["required"], false, "{setup}");
    let admin = d.login("admin", PASSWORD);
    assert_eq!(admin.get("/api/v1/me").json()["role"], "admin");
    let audit = admin.get("/api/v1/audit").json();
    assert!(
        audit["records"].as_array().unwrap().iter().any(|r| {
            r["action"] == "user_change"
                && r["object"] == "admin"
                && r["detail"]
                    .as_str()
                    .unwrap()
                    .contains("from the provisioning file")
        }),
        "{audit}"
    );
}

/// The pending administrator never outlives a start, and once the box has an
/// administrator, `duli provision` refuses `[admin]` (with the daemon running or not)
/// instead of leaving a credential that could take over an account.
#[test]
fn the_pending_admin_is_consumed_and_not_provisioned_again() {
    let s = Stick::new();
    s.provision(&["--owner", "duli"])
        .assert_success("duli provision");
    let pending = s.path("box/etc/pending-admin.toml");
    let mut d = start_provisioned(&s);
    assert!(!pending.exists(), "consumed at start");
    d.login("admin", PASSWORD);
    for running in [true, false] {
        if !running {
            d.kill();
        }
        // The store is the daemon's (or is opened to read the accounts): the rest is compared.
        let data = s.path("box/data");
        let outside_data = |s: &Stick| s.snapshot_except(Some(&data));
        let before = outside_data(&s);
        let out = s.provision(&["--owner", "duli"]);
        assert_eq!(out.code(), Some(2), "{}", out.combined());
        assert!(
            out.stderr.contains("administrator already")
                && out.stderr.contains("nothing was written"),
            "{}",
            out.stderr
        );
        assert!(!pending.exists(), "daemon running: {running}");
        assert_eq!(before, outside_data(&s), "daemon running: {running}");
    }
    // Without [admin], provisioning the box again is fine.
    let t = fs::read_to_string(s.file()).unwrap();
    let start = t.find("[admin]").unwrap();
    let end = start + t[start..].find("password = ").unwrap();
    let end = end + t[end..].find('\n').unwrap() + 1;
    let mut without = t.clone();
    without.replace_range(start..end, "");
    fs::write(s.file(), without).unwrap();
    s.provision(&["--owner", "duli"])
        .assert_success("provision without [admin]");
    assert!(!pending.exists());
}

#[test]
fn on_the_image_the_time_zone_goes_through_the_links_into_the_data_partition() {
    let s = Stick::new();
    // The image's read-only root: /etc/localtime and /etc/timezone link into /data/etc
    // (seeded with UTC by duli-data-layout.service).
    let root = s.path("box/root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("data/etc")).unwrap();
    std::os::unix::fs::symlink("/data/etc/localtime", root.join("etc/localtime")).unwrap();
    std::os::unix::fs::symlink("/data/etc/timezone", root.join("etc/timezone")).unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", root.join("data/etc/localtime")).unwrap();
    fs::write(root.join("data/etc/timezone"), "UTC").unwrap();

    s.provision(&[]).assert_success("duli provision");
    assert_eq!(
        fs::read_link(root.join("etc/localtime")).unwrap(),
        Path::new("/data/etc/localtime"),
        "the image's link is not replaced"
    );
    assert_eq!(
        fs::read_link(root.join("etc/timezone")).unwrap(),
        Path::new("/data/etc/timezone")
    );
    assert_eq!(
        fs::read_link(root.join("data/etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/America/Sao_Paulo")
    );
    assert_eq!(
        fs::read_to_string(root.join("data/etc/timezone")).unwrap(),
        "America/Sao_Paulo\n"
    );
}

/// A leaked endorsed key is withdrawn on site by provisioning, before a release revokes
/// it: `[firmware] withdraw` removes every endorsement file of that key (whatever the
/// file is called) and leaves the others; a malformed key id is refused with nothing
/// written.
#[test]
fn provisioning_withdraws_a_key_endorsement() {
    use duli_firmware::endorsement::Endorsement;
    use duli_firmware::keys::generate_pkcs8;
    use duli_firmware::{SigningKey, TrustAnchors};
    let s = Stick::new();
    s.provision(&[]).assert_success("first provision");
    let keys = s.path("box/etc/firmware-keys");
    fs::create_dir_all(&keys).unwrap();
    let config = fs::read_to_string(s.config()).unwrap();
    assert!(!config.contains("[firmware]"), "{config}");
    fs::write(
        s.config(),
        format!(
            "{config}\n[firmware]\nendorsed_keys = \"{}\"\n",
            keys.display()
        ),
    )
    .unwrap();
    let key = || SigningKey::from_pkcs8(&generate_pkcs8().unwrap()).unwrap();
    let (root, leaked, kept) = (key(), key(), key());
    let leaked_id = leaked.public_key().id().to_string();
    let kept_id = kept.public_key().id().to_string();
    let endorse = |name: &str, k: &SigningKey| {
        let e = Endorsement::create(&root, &k.public_key(), "site packs");
        fs::write(keys.join(name), e.to_json()).unwrap();
    };
    endorse(&format!("{leaked_id}.endorsement.json"), &leaked);
    endorse("group-packs.endorsement.json", &leaked);
    endorse(&format!("{kept_id}.endorsement.json"), &kept);
    let good = fs::read_to_string(s.file()).unwrap();
    assert!(good.contains("withdraw = []"), "the example names withdraw");

    fs::write(
        s.file(),
        good.replace("withdraw = []", "withdraw = [\"../../etc/passwd\"]"),
    )
    .unwrap();
    assert_refused(&s, "malformed key id", &[], "firmware.withdraw[0]");

    fs::write(
        s.file(),
        good.replace(
            "withdraw = []",
            &format!("withdraw = [\"{}\"]", leaked_id.to_uppercase()),
        ),
    )
    .unwrap();
    let out = s.provision(&[]);
    out.assert_success("withdraw");
    assert!(
        out.stdout.contains("withdrawn") && out.stdout.contains(&leaked_id),
        "{}",
        out.stdout
    );
    assert!(!keys.join(format!("{leaked_id}.endorsement.json")).exists());
    assert!(!keys.join("group-packs.endorsement.json").exists());
    assert!(keys.join(format!("{kept_id}.endorsement.json")).exists());
    let mut anchors = TrustAnchors::from_roots(vec![root.public_key()]);
    let trusted: Vec<String> = anchors
        .load_endorsements(&keys)
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(
        trusted,
        vec![kept_id],
        "only the kept key is still endorsed"
    );
    // Provisioning the same file again is a no-op for the endorsements.
    s.provision(&[]).assert_success("withdraw again");
    assert!(keys
        .join(format!("{}.endorsement.json", trusted[0]))
        .exists());
}
