use super::*;

fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duli.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(
        Some(&path),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_are_valid_and_loopback() {
    let c = Config::load(None, Vec::new()).unwrap();
    assert_eq!(c.dicom.ae_title, "DULI");
    assert_eq!(c.dicom.port, 11112);
    assert!(c.dicom.bind.is_loopback());
    assert!(c.console.bind.is_loopback());
    assert_eq!(c.console.port, 8443);
    assert!(c.device.data_dir.is_absolute());
    assert!(c.device.data_dir.ends_with("duli-data"));
}

#[test]
fn env_overrides_scalars_and_lists() {
    let c = load_str(
        "[dicom]\nport = 104\n",
        &[
            ("DULI_DICOM__PORT", "4242"),
            ("DULI_DICOM__QUIET_PERIOD", "0"),
            ("DULI_MQTT__TLS", "false"),
            ("DULI_DEVICE__SITE_ID", "hospital-a"),
            (
                "DULI_DICOM__ALLOWED_PEERS",
                r#"[{ae_title = "MOD1", permissions = ["echo", "store"]}]"#,
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.dicom.port, 4242);
    assert_eq!(c.dicom.quiet_period, 0);
    assert!(!c.mqtt.tls);
    assert_eq!(c.device.site_id, "hospital-a");
    assert_eq!(c.dicom.allowed_peers[0].ae_title, "MOD1");
    assert_eq!(
        c.dicom.allowed_peers[0].permissions,
        vec![Permission::Echo, Permission::Store]
    );
}

/// The console's port taken by a DICOM port on the same address is refused at load, not
/// found when the second listener fails to bind; on other addresses it is fine.
#[test]
fn the_console_port_is_no_dicom_port() {
    let err = load_str("", &[("DULI_CONSOLE__PORT", "11112")])
        .map(|_| ())
        .expect_err("the console on the DICOM port")
        .to_string();
    assert!(
        err.contains("console.port") && err.contains("dicom.port"),
        "{err}"
    );
    assert!(load_str(
        "",
        &[
            ("DULI_CONSOLE__PORT", "11112"),
            ("DULI_CONSOLE__BIND", "127.0.0.2"),
        ],
    )
    .is_ok());
}

#[test]
fn plain_port_and_certificate_bindings_are_checked() {
    let err = |env: &[(&str, &str)]| match load_str("", env) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{env:?} accepted"),
    };
    // No port left at all.
    assert!(err(&[("DULI_DICOM__PLAIN", "false")]).contains("dicom.plain"));
    let fp = "AB:".repeat(31) + "AB";
    let peers = format!(r#"[{{ae_title = "MOD1", cert_sha256 = "{fp}"}}]"#);
    // A certificate binding needs the TLS port; a malformed fingerprint is named.
    assert!(err(&[("DULI_DICOM__ALLOWED_PEERS", &peers)]).contains("needs dicom.tls"));
    // HL7 namespace ids (MSH-4/5/6) are at most 20 characters.
    let long_site = err(&[
        ("DULI_HL7__ENABLED", "true"),
        ("DULI_HL7__HOST", "ris.example"),
        ("DULI_DEVICE__SITE_ID", "a-very-long-site-identifier"),
    ]);
    assert!(long_site.contains("MSH-4"), "{long_site}");
    let long_app = err(&[("DULI_HL7__RECEIVING_APPLICATION", "RIS-WITH-A-LONG-NAME-X")]);
    assert!(long_app.contains("hl7.receiving_application"), "{long_app}");
    // With the TLS port but no CA, no client certificate is asked for.
    let tls_without_ca = err(&[
        ("DULI_DICOM__ALLOWED_PEERS", &peers),
        ("DULI_DICOM__TLS", "true"),
        ("DULI_DICOM__TLS_REQUIRE_CLIENT_CERT", "false"),
    ]);
    assert!(
        tls_without_ca.contains("needs dicom.ca"),
        "{tls_without_ca}"
    );
    let short = r#"[{ae_title = "MOD1", cert_sha256 = "abcd"}]"#;
    assert!(
        err(&[("DULI_DICOM__ALLOWED_PEERS", short)]).contains("dicom.allowed_peers[0].cert_sha256")
    );
    let c = load_str("", &[]).unwrap();
    assert!(c.dicom.plain, "plain DICOM stays on by default");
    let p = AllowedPeer {
        ae_title: "MOD1".into(),
        address: None,
        permissions: Permission::ALL.to_vec(),
        cert_sha256: Some(fp),
    };
    assert_eq!(p.cert_fingerprint().unwrap(), "ab".repeat(32));
    // An entry without permissions is a modality: echo and store, never query or
    // retrieve (which read every study) unless listed.
    let c = load_str(
        "[dicom]\nallowed_peers = [{ae_title = \"CR_ROOM2\", address = \"10.10.2.32\"}]\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.dicom.allowed_peers[0].permissions,
        [Permission::Echo, Permission::Store]
    );
}

#[test]
fn relative_paths_in_file_resolve_against_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duli.toml");
    std::fs::write(&path, "[device]\ndata_dir = \"store\"\n").unwrap();
    let c = Config::load(Some(&path), Vec::new()).unwrap();
    assert_eq!(c.device.data_dir, dir.path().join("store"));
    // the default model (not in the file) is wherever `locate` finds it
    assert_eq!(
        c.inference.model,
        crate::locate::model_manifest().or_first()
    );
    assert!(c.inference.model.is_absolute());
}

/// A PACS destination's TLS files given relative to the configuration file are found
/// whatever the working directory (as under systemd).
#[test]
fn relative_pacs_tls_paths_resolve_against_the_file_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    for f in ["ca.pem", "client.pem", "client.key"] {
        std::fs::write(dir.path().join("tls").join(f), "x").unwrap();
    }
    let path = dir.path().join("duli.toml");
    std::fs::write(
        &path,
        "[[pacs.destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"h\"\n\
         port = 104\ntls = true\ntls_ca = \"tls/ca.pem\"\ntls_cert = \"tls/client.pem\"\n\
         tls_key = \"tls/client.key\"\n",
    )
    .unwrap();
    let c = Config::load(Some(&path), Vec::new()).unwrap();
    let d = &c.pacs.destinations[0];
    let tls = dir.path().join("tls");
    assert_eq!(d.tls_ca.as_deref(), Some(tls.join("ca.pem").as_path()));
    assert_eq!(
        d.tls_cert.as_deref(),
        Some(tls.join("client.pem").as_path())
    );
    assert_eq!(d.tls_key.as_deref(), Some(tls.join("client.key").as_path()));
    // Without `result_objects`, a PACS gets the SR and the Secondary Capture, not the
    // Parametric Map (which many archives do not take).
    assert_eq!(
        d.result_objects,
        [
            super::delivery::ResultObject::Sr,
            super::delivery::ResultObject::Sc
        ]
    );
}

#[test]
fn an_environment_path_resolves_against_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duli.toml");
    std::fs::write(&path, "[device]\ndata_dir = \"store\"\n").unwrap();
    let env = vec![("DULI_DEVICE__DATA_DIR".to_string(), "elsewhere".to_string())];
    let c = Config::load(Some(&path), env).unwrap();
    assert_eq!(
        c.device.data_dir,
        std::env::current_dir().unwrap().join("elsewhere")
    );
}

#[test]
fn console_limits_have_defaults_and_are_checked() {
    let c = load_str("", &[]).unwrap();
    assert_eq!(c.console.max_connections_per_address, 64);
    assert_eq!(c.console.header_read_timeout_secs, 10);
    assert_eq!(c.console.max_uploads_per_user, 2);
    let err = load_str(
        "[console]\nmax_connections = 10\nmax_connections_per_address = 11\n\
         header_read_timeout_secs = 0\nmax_uploads = 2\nmax_uploads_per_user = 3\n\
         max_upload_mb = 0\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    for key in [
        "console.max_connections_per_address",
        "console.header_read_timeout_secs",
        "console.max_uploads_per_user",
        "console.max_upload_mb",
    ] {
        assert!(err.contains(key), "{key} not in {err}");
    }
    let c = load_str(
        "[console]\nmax_connections_per_address = 4\nidle_timeout_secs = 5\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        (
            c.console.max_connections_per_address,
            c.console.idle_timeout_secs
        ),
        (4, 5)
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = load_str("[dicom]\nae_titel = \"X\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("ae_titel"), "{err}");
    let err = load_str("[dicomm]\n", &[]).unwrap_err();
    assert!(err.to_string().contains("dicomm"), "{err}");
}

#[test]
fn every_error_names_its_key() {
    let err = load_str(
        "[dicom]\nae_title = \"THIS_TITLE_IS_TOO_LONG\"\nmax_associations = 0\nmax_instance_mb = 0\n[inference]\ndevice = \"TPU\"\nmax_pixels = 0\n",
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    for key in [
        "dicom.ae_title",
        "dicom.max_associations",
        "dicom.max_instance_mb",
        "inference.device",
        "inference.max_pixels",
    ] {
        assert!(text.contains(key), "{key} missing in {text}");
    }
}

/// The audit trail's budget defaults to a million records and is never set so low that a
/// busy day would shed it within hours.
#[test]
fn the_audit_budget_has_a_floor() {
    let c = Config::load(None, Vec::new()).unwrap();
    assert_eq!(c.audit.max_records, 1_000_000);
    let c = load_str("[audit]\nmax_records = 10000\n", &[]).unwrap();
    assert_eq!(c.audit.max_records, 10_000);
    for bad in ["0", "9999"] {
        let err = load_str(&format!("[audit]\nmax_records = {bad}\n"), &[]).unwrap_err();
        assert!(
            err.to_string().contains("audit.max_records"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn pending_connection_and_find_match_bounds_are_validated() {
    let c = Config::load(None, Vec::new()).unwrap();
    assert_eq!(c.dicom.max_pending_connections, 512);
    assert_eq!(c.dicom.max_pending_per_address, 32);
    assert_eq!(c.dicom.max_find_matches, 10_000);
    assert_eq!(c.dicom.max_qr_requests_per_minute, 300);
    assert_eq!(c.dicom.max_instances_per_study, 10_000);
    let c = load_str(
        "[dicom]\nmax_pending_connections = 64\nmax_pending_per_address = 64\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.dicom.max_pending_per_address, 64);
    for (text, key) in [
        (
            "max_pending_connections = 0",
            "dicom.max_pending_connections",
        ),
        (
            "max_pending_connections = 20000",
            "dicom.max_pending_connections",
        ),
        (
            "max_pending_per_address = 0",
            "dicom.max_pending_per_address",
        ),
        (
            "max_pending_per_address = 513",
            "dicom.max_pending_per_address",
        ),
        ("max_find_matches = 0", "dicom.max_find_matches"),
        ("max_find_matches = 1000001", "dicom.max_find_matches"),
        (
            "max_qr_requests_per_minute = 0",
            "dicom.max_qr_requests_per_minute",
        ),
        (
            "max_instances_per_study = 50001",
            "dicom.max_instances_per_study",
        ),
    ] {
        let err = load_str(&format!("[dicom]\n{text}\n"), &[]).unwrap_err();
        assert!(err.to_string().contains(key), "{text}: {err}");
    }
}

#[test]
fn firmware_section_parses_and_its_errors_name_the_key() {
    let c = load_str(
        "[firmware]\nbootloader = \"file\"\nboot_env_file = \"fw/bootenv\"\nhardware_id = \"test-hw\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.firmware.bootloader,
        duli_firmware::config::Bootloader::File
    );
    assert!(c.firmware.boot_env_file.is_absolute());
    assert!(c.firmware.boot_env_file.ends_with("fw/bootenv"));
    assert_eq!(c.firmware.hardware_id.as_deref(), Some("test-hw"));
    // Renders and reloads.
    assert!(c.to_toml().contains("[firmware]"));
    let err = load_str(
        "[firmware]\nboot_attempts = 0\nbooted_slot = \"C\"\nhardware_id = \"a b\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    for key in [
        "firmware.boot_attempts",
        "firmware.booted_slot",
        "firmware.hardware_id",
    ] {
        assert!(err.contains(key), "{key} missing in {err}");
    }
    let err = load_str("[firmware]\nslot_c = \"/dev/x\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("slot_c"), "{err}");
    // The model-pack floor cannot live in the service user's pack folder.
    let err = load_str(
        "[firmware]\nmodel_packs = \"/var/lib/duli/models\"\nmodel_pack_versions = \"/var/lib/duli/models/floor.json\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("firmware.model_pack_versions"), "{err}");
}

#[test]
fn destination_tls_needs_a_ca_and_a_cert_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let dest = |extra: &str| {
        format!(
            "[[pacs.destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\n\
             host = \"pacs.example\"\nport = 2762\npush = true\n{extra}\n"
        )
    };
    let keys = |text: &str| -> Vec<String> {
        match load_str(text, &[]) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(errors)) => errors.into_iter().map(|e| e.key).collect(),
            Err(e) => panic!("{e}"),
        }
    };
    let ok = dest(&format!(
        "tls = true\ntls_ca = {:?}",
        ca.display().to_string()
    ));
    assert_eq!(keys(&ok), Vec::<String>::new());
    let cfg = load_str(&ok, &[]).unwrap();
    let tls = cfg.pacs.destinations[0].outbound_tls().unwrap();
    assert_eq!(tls.ca, ca);
    assert_eq!(keys(&dest("tls = true")), ["pacs.destinations[0].tls_ca"]);
    assert_eq!(
        keys(&dest(&format!("tls_ca = {:?}", ca.display().to_string()))),
        ["pacs.destinations[0].tls_ca"]
    );
    let cert_only = format!(
        "tls = true\ntls_ca = {ca:?}\ntls_cert = {ca:?}",
        ca = ca.display().to_string()
    );
    assert_eq!(keys(&dest(&cert_only)), ["pacs.destinations[0].tls_key"]);
    assert_eq!(
        load_str(&dest(""), &[]).unwrap().pacs.destinations[0].outbound_tls(),
        None
    );
}

#[test]
fn each_destination_counts_its_own_refusals() {
    let dest = |extra: &str| {
        format!(
            "[hl7]\nmax_rejections = 2\n[[pacs.destinations]]\nname = \"pacs\"\n\
             ae_title = \"PACS\"\nhost = \"pacs.example\"\nport = 104\npush = true\n{extra}\n"
        )
    };
    let cfg = load_str(&dest(""), &[]).unwrap();
    assert_eq!(cfg.pacs.destinations[0].max_rejections, 5, "default");
    assert_eq!(cfg.hl7.max_rejections, 2, "not the PACS's");
    let cfg = load_str(&dest("max_rejections = 1"), &[]).unwrap();
    assert_eq!(cfg.pacs.destinations[0].max_rejections, 1);
    match load_str(&dest("max_rejections = 0"), &[]) {
        Err(ConfigError::Invalid(errors)) => assert_eq!(
            errors.into_iter().map(|e| e.key).collect::<Vec<_>>(),
            ["pacs.destinations[0].max_rejections"]
        ),
        other => panic!("max_rejections = 0 accepted: {other:?}"),
    }
    // Storage Commitment: off by default, its wait bounded to a day.
    assert!(!cfg.pacs.destinations[0].storage_commitment);
    assert_eq!(cfg.pacs.destinations[0].commitment_timeout_s, 300);
    let cfg = load_str(
        &dest(
            "storage_commitment = true
commitment_timeout_s = 3600",
        ),
        &[],
    )
    .unwrap();
    assert!(cfg.pacs.destinations[0].storage_commitment);
    assert_eq!(cfg.pacs.destinations[0].commitment_timeout_s, 3600);
    for bad in ["commitment_timeout_s = 0", "commitment_timeout_s = 86401"] {
        match load_str(&dest(bad), &[]) {
            Err(ConfigError::Invalid(errors)) => assert_eq!(
                errors.into_iter().map(|e| e.key).collect::<Vec<_>>(),
                ["pacs.destinations[0].commitment_timeout_s"],
                "{bad}"
            ),
            other => panic!("{bad} accepted: {other:?}"),
        }
    }
}

/// `[hl7] tls = true` is checked like a PACS destination's TLS: the CA bundle is required,
/// the client certificate and key go together, every file exists.
#[test]
fn hl7_tls_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let ca = ca.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();
    let hl7 = |extra: &str| {
        format!("[hl7]\nenabled = true\nhost = \"ris.example\"\nport = 2575\ntls = true\n{extra}\n")
    };
    let keys = |text: &str| match load_str(text, &[]) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(errors)) => errors.into_iter().map(|e| e.key).collect(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(keys(&hl7(&format!("ca = {ca:?}"))), Vec::<String>::new());
    assert_eq!(
        keys(&hl7(&format!("ca = {ca:?}\ncert = {ca:?}\nkey = {ca:?}"))),
        Vec::<String>::new()
    );
    assert_eq!(keys(&hl7("")), ["hl7.ca"]);
    assert_eq!(keys(&hl7(&format!("ca = {missing:?}"))), ["hl7.ca"]);
    assert_eq!(
        keys(&hl7(&format!("ca = {ca:?}\ncert = {ca:?}"))),
        ["hl7.key"]
    );
    assert_eq!(
        keys(&hl7(&format!("ca = {ca:?}\nkey = {ca:?}"))),
        ["hl7.cert"]
    );
    assert_eq!(
        keys(&hl7(&format!(
            "ca = {ca:?}\ncert = {ca:?}\nkey = {missing:?}"
        ))),
        ["hl7.key"]
    );
    // Without TLS, or with HL7 off, the files are not used and not checked.
    let plain = "[hl7]\nenabled = true\nhost = \"ris.example\"\nport = 2575\ntls = false\n\
                 allow_plain = true\n";
    assert_eq!(keys(plain), Vec::<String>::new());
    assert_eq!(
        keys("[hl7]\nenabled = false\ntls = true\n"),
        Vec::<String>::new()
    );
}

/// Plain MLLP carries patient data in clear: toward a RIS that is not on this box it needs
/// `hl7.allow_plain = true`; loopback hosts, TLS, or HL7 off need nothing.
#[test]
fn plain_mllp_to_a_network_host_needs_allow_plain() {
    let hl7 = |host: &str, extra: &str| {
        format!("[hl7]\nenabled = true\nhost = {host:?}\nport = 2575\ntls = false\n{extra}")
    };
    for host in [
        "ris.example",
        "10.1.2.3",
        "localhost.example",
        "::2",
        "128.0.0.1",
    ] {
        let text = match load_str(&hl7(host, ""), &[]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("plain MLLP to {host} accepted"),
        };
        assert!(
            text.contains("hl7.tls") && text.contains("hl7.allow_plain"),
            "{text}"
        );
        let c = load_str(&hl7(host, "allow_plain = true\n"), &[]).unwrap();
        assert!(c.hl7.allow_plain);
    }
    for host in [
        "127.0.0.1",
        "127.3.2.1",
        "localhost",
        "LOCALHOST",
        "::1",
        "[::1]",
    ] {
        load_str(&hl7(host, ""), &[]).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    load_str("[hl7]\nenabled = false\nhost = \"ris.example\"\n", &[]).unwrap();
}

/// MQTT without TLS authenticates no broker: toward a broker that is not on this box it
/// needs `mqtt.allow_plain = true`; loopback brokers need nothing.
#[test]
fn plain_mqtt_to_a_network_broker_needs_allow_plain() {
    let mqtt = |host: &str, extra: &str| {
        format!("[mqtt]\nenabled = true\nhost = {host:?}\nport = 1883\ntls = false\n{extra}")
    };
    for host in ["broker.example.com", "10.1.2.3"] {
        let text = match load_str(&mqtt(host, ""), &[]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("plain MQTT to {host} accepted"),
        };
        assert!(
            text.contains("mqtt.tls") && text.contains("mqtt.allow_plain"),
            "{text}"
        );
        let c = load_str(&mqtt(host, "allow_plain = true\n"), &[]).unwrap();
        assert!(c.mqtt.allow_plain);
    }
    for host in ["127.0.0.1", "localhost", "::1"] {
        load_str(&mqtt(host, ""), &[]).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
}

/// `[mqtt] tls = true` needs the CA bundle, the client certificate and its key, each an
/// existing file.
#[test]
fn mqtt_tls_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let ca = ca.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();
    let mqtt = |extra: &str| format!("[mqtt]\nenabled = true\ntls = true\n{extra}\n");
    let keys = |text: &str| match load_str(text, &[]) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(errors)) => errors.into_iter().map(|e| e.key).collect(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        keys(&mqtt(&format!("ca = {ca:?}\ncert = {ca:?}\nkey = {ca:?}"))),
        Vec::<String>::new()
    );
    assert_eq!(
        keys(&mqtt(&format!("ca = {ca:?}\ncert = {ca:?}"))),
        ["mqtt.key"]
    );
    assert_eq!(
        keys(&mqtt(&format!(
            "ca = {missing:?}\ncert = {ca:?}\nkey = {ca:?}"
        ))),
        ["mqtt.ca"]
    );
}

#[test]
fn an_empty_allow_list_on_a_network_address_needs_allow_any_peer() {
    for bind in ["0.0.0.0", "::", "10.1.2.3", "::ffff:10.1.2.3"] {
        for tls in [false, true] {
            let mut env = vec![("DULI_DICOM__BIND", bind)];
            if tls {
                // The TLS listener alone, on the same address.
                env.push(("DULI_DICOM__PLAIN", "false"));
                env.push(("DULI_DICOM__TLS", "true"));
            }
            let text = match load_str("", &env) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("bind {bind} (tls {tls}) with no allowed_peers accepted"),
            };
            assert!(
                text.contains("dicom.allowed_peers") && text.contains("dicom.allow_any_peer"),
                "{text}"
            );
        }
        // An explicit choice, or a list, is accepted.
        let c = load_str(
            "",
            &[
                ("DULI_DICOM__BIND", bind),
                ("DULI_DICOM__ALLOW_ANY_PEER", "true"),
            ],
        )
        .unwrap();
        assert!(c.dicom.open_to_any_peer());
        let c = load_str(
            "",
            &[
                ("DULI_DICOM__BIND", bind),
                ("DULI_DICOM__ALLOWED_PEERS", r#"[{ae_title = "MOD1"}]"#),
            ],
        )
        .unwrap();
        assert!(!c.dicom.open_to_any_peer());
    }
    // Loopback only: an empty list stays the default.
    for bind in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let c = load_str("", &[("DULI_DICOM__BIND", bind)]).unwrap();
        assert!(c.dicom.allowed_peers.is_empty() && !c.dicom.open_to_any_peer());
    }
}

#[test]
fn a_model_pack_names_its_manifest_and_excludes_inference_model() {
    let c = load_str(
        "[device]\ndata_dir = \"/var/lib/duli\"\n[inference]\nmodel_pack = \"chest-2\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.inference.model,
        std::path::Path::new("/var/lib/duli/model-in-service/chest-2/model.toml")
    );
    let err = load_str(
        "[inference]\nmodel_pack = \"chest\"\nmodel = \"/opt/m/model.toml\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("inference.model") && err.contains("model_pack"),
        "{err}"
    );
    for bad in ["../x", ".hidden", "a b", ""] {
        let err = load_str(&format!("[inference]\nmodel_pack = {bad:?}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference.model_pack"), "{bad:?}: {err}");
    }
}

#[test]
fn a_model_inside_the_data_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("models/m")).unwrap();
    // The configuration error of `[inference] key = path` with `data` as the data folder.
    let load = |key: &str, path: &std::path::Path| {
        let text = format!(
            "[device]\ndata_dir = \"{}\"\n[inference]\n{key} = \"{}\"\n",
            data.display(),
            path.display()
        );
        load_str(&text, &[]).map(|_| ()).map_err(|e| e.to_string())
    };
    let err = load("model", &data.join("models/m/model.toml")).unwrap_err();
    assert!(
        err.contains("inference.model") && err.contains("signed model"),
        "{err}"
    );
    // Through a link into it, too.
    std::os::unix::fs::symlink(data.join("models"), dir.path().join("link")).unwrap();
    let err = load("model", &dir.path().join("link/m")).unwrap_err();
    assert!(err.contains("inference.model"), "{err}");
    // The runtime library, code the daemon loads, likewise.
    let err = load("openvino_lib", &data.join("libopenvino_c.so")).unwrap_err();
    assert!(err.contains("inference.openvino_lib"), "{err}");
    // Beside it is fine.
    load("model", &dir.path().join("model/model.toml")).unwrap();
}

/// Session lifetimes are bounded (24 hours idle, 7 days in all): a value in milliseconds
/// by mistake, or a huge one, is refused naming the key and the limit (it was accepted,
/// and the live event stream's end wrapped round to the past).
#[test]
fn session_lifetimes_are_bounded() {
    let load = |idle: u64, max: u64| {
        load_str(
            &format!("[console]\nsession_idle_secs = {idle}\nsession_max_secs = {max}\n"),
            &[],
        )
        .map(|c| (c.console.session_idle_secs, c.console.session_max_secs))
        .map_err(|e| e.to_string())
    };
    assert_eq!(load(86_400, 604_800), Ok((86_400, 604_800)));
    let err = load(86_401, 604_800).unwrap_err();
    assert!(
        err.contains("console.session_idle_secs") && err.contains("86400"),
        "{err}"
    );
    let err = load(1800, 604_801).unwrap_err();
    assert!(
        err.contains("console.session_max_secs") && err.contains("604800"),
        "{err}"
    );
    let err = load(1800, 9_223_372_036_854_775_807).unwrap_err();
    assert!(err.contains("console.session_max_secs"), "{err}");
    assert!(load(0, 1800)
        .unwrap_err()
        .contains("console.session_idle_secs"));
    assert!(load(3600, 1800).unwrap_err().contains("at least"));
    let defaults = ConsoleConfig::default();
    assert!(defaults.session_idle_secs <= console::MAX_SESSION_IDLE_SECS);
    assert!(defaults.session_max_secs <= console::MAX_SESSION_MAX_SECS);
}

/// Root's records of the firmware trust (the model-pack floor, the endorsed keys) are
/// refused inside the folders the service user writes, however the path reaches there:
/// directly, through `..`, or through a link, also before the record exists (only a
/// path starting with `firmware.model_packs` as written was refused before).
#[test]
fn firmware_trust_records_are_refused_where_the_service_writes() {
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| dir.path().join(p);
    std::fs::create_dir_all(at("data/models")).unwrap();
    std::fs::create_dir_all(at("etc")).unwrap();
    std::os::unix::fs::symlink(at("data"), at("etc/state")).unwrap();
    // The error of a configuration whose data folder is `data`, its packs `data/models`,
    // with `key = path` in [firmware].
    let load = |key: &str, path: &str| {
        let text = format!(
            "[device]\ndata_dir = \"{}\"\n[firmware]\nmodel_packs = \"{}\"\n{key} = \"{}\"\n",
            at("data").display(),
            at("data/models").display(),
            at(path).display()
        );
        load_str(&text, &[]).map(|_| ()).map_err(|e| e.to_string())
    };
    for key in ["firmware.model_pack_versions", "firmware.endorsed_keys"] {
        let short = key.trim_start_matches("firmware.");
        for (how, path) in [
            ("in the data folder", "data/keys"),
            ("in the pack folder", "data/models/floor.json"),
            ("through ..", "etc/../data/floor.json"),
            ("through a link", "etc/state/floor.json"),
            ("through a link and ..", "etc/state/x/../y/floor.json"),
        ] {
            let err = load(short, path).unwrap_err();
            assert!(
                err.contains(key) && err.contains("which the service user writes"),
                "{key} {how}: {err}"
            );
        }
        // Beside them, where only root writes, is fine.
        load(short, "etc/firmware-state/floor.json").unwrap();
    }
}

/// The shipped unit's `LimitNOFILE=` covers the descriptors the largest configuration the
/// daemon accepts can open (with headroom), and systemd/README.md states that sum.
#[test]
fn the_unit_s_open_file_limit_covers_the_largest_accepted_configuration() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("systemd/duli.service")).unwrap();
    let limit: usize = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .expect("duli.service sets LimitNOFILE=")
        .trim()
        .parse()
        .unwrap();
    let needed = super::validate::descriptors_needed();
    assert_eq!(needed, 24_128);
    assert!(
        limit >= needed + needed / 4,
        "LimitNOFILE={limit} leaves less than 25% over the {needed} descriptors needed"
    );
    let readme = std::fs::read_to_string(root.join("systemd/README.md")).unwrap();
    assert!(
        readme.contains("**24,128**") && readme.contains(&format!("`LimitNOFILE={limit}`")),
        "systemd/README.md states another sum or limit"
    );
}
