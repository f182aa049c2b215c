//! Sign → verify, and every kind of tampering rejected with its own error.

mod common;

use std::fs;

use common::*;
use duli_firmware::bundle::{BundleError, HEADER_LEN};
use duli_firmware::endorsement::Endorsement;
use duli_firmware::keys::{generate_pkcs8, SigningKey};
use duli_firmware::scope::Scope;
use duli_firmware::{verify, PayloadKind, TrustAnchors, Version};

fn flip(path: &std::path::Path, offset: usize) -> std::path::PathBuf {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    let out = path.with_extension(format!("flip{offset}"));
    fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn signed_bundle_verifies_with_streamed_payload() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let rel = rootfs(Version::new(1, 4, 2));
    // Larger than one streaming chunk, not a multiple of it.
    let (bundle, payload) = bundle(dir.path(), "b", &keys, &rel, 1_000_003, 4);
    let verified = verify(&bundle, &keys.anchors).unwrap();
    let m = verified.manifest();
    assert_eq!(m.version, Version::new(1, 4, 2));
    assert_eq!(m.min_version, Version::new(1, 0, 0));
    assert_eq!(m.hardware, vec![HW.to_string()]);
    assert_eq!(m.payload.kind, PayloadKind::Rootfs);
    assert_eq!(m.payload.size, payload.len() as u64);
    let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
    assert_eq!(m.payload.sha256, hex::encode(digest.as_ref()));
    assert_eq!(verified.signer(), keys.anchors.roots()[0].id());
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut verified.open_payload().unwrap(), &mut read).unwrap();
    assert_eq!(read, payload);
}

#[test]
fn each_tampering_has_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let (bundle, payload) = bundle(
        dir.path(),
        "b",
        &keys,
        &rootfs(Version::new(1, 1, 0)),
        5000,
        7,
    );
    let bytes = fs::read(&bundle).unwrap();
    let manifest_len = u32::from_be_bytes(bytes[80..84].try_into().unwrap()) as usize;
    let payload_start = HEADER_LEN as usize + manifest_len;
    assert_eq!(bytes.len() - payload_start, payload.len());

    // One flipped bit anywhere in the manifest: the signature no longer covers it.
    for offset in [
        HEADER_LEN as usize,
        HEADER_LEN as usize + manifest_len / 2,
        payload_start - 1,
    ] {
        let e = verify(&flip(&bundle, offset), &keys.anchors).unwrap_err();
        assert!(
            matches!(e, BundleError::BadSignature),
            "manifest byte {offset}: {e}"
        );
    }
    // One flipped bit in the signature.
    for offset in [16, 47, 79] {
        let e = verify(&flip(&bundle, offset), &keys.anchors).unwrap_err();
        assert!(
            matches!(e, BundleError::BadSignature),
            "signature byte {offset}: {e}"
        );
    }
    // One flipped bit in the payload: first, middle, last byte.
    for offset in [payload_start, payload_start + 2500, bytes.len() - 1] {
        let e = verify(&flip(&bundle, offset), &keys.anchors).unwrap_err();
        assert!(
            matches!(e, BundleError::PayloadHashMismatch { .. }),
            "payload byte {offset}: {e}"
        );
    }
    // The key id names a key the device does not know.
    let e = verify(&flip(&bundle, 8), &keys.anchors).unwrap_err();
    assert!(matches!(e, BundleError::UntrustedKey(_)), "{e}");
    // Magic.
    let e = verify(&flip(&bundle, 3), &keys.anchors).unwrap_err();
    assert!(matches!(e, BundleError::BadMagic), "{e}");
    // Truncated or extended payload.
    let cut = dir.path().join("cut.duli");
    fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(
        verify(&cut, &keys.anchors).unwrap_err(),
        BundleError::PayloadSize {
            expected: 5000,
            actual: 4999
        }
    ));
    let long = dir.path().join("long.duli");
    let mut extended = bytes.clone();
    extended.extend_from_slice(b"xyz");
    fs::write(&long, extended).unwrap();
    assert!(matches!(
        verify(&long, &keys.anchors).unwrap_err(),
        BundleError::TrailingData { expected: 5000 }
    ));
    // A sparse terabyte after the payload is refused on its first byte, not hashed.
    let huge = dir.path().join("huge.duli");
    fs::write(&huge, &bytes).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&huge).unwrap();
    f.set_len(bytes.len() as u64 + (1u64 << 40)).unwrap();
    drop(f);
    let started = std::time::Instant::now();
    assert!(matches!(
        verify(&huge, &keys.anchors).unwrap_err(),
        BundleError::TrailingData { expected: 5000 }
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let stub = dir.path().join("stub.duli");
    fs::write(&stub, &bytes[..60]).unwrap();
    assert!(matches!(
        verify(&stub, &keys.anchors).unwrap_err(),
        BundleError::Truncated
    ));
    assert!(matches!(
        verify(&dir.path().join("absent.duli"), &keys.anchors).unwrap_err(),
        BundleError::Io { .. }
    ));
}

#[test]
fn wrong_key_is_untrusted_and_endorsement_admits_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = keys();
    let other = keys();
    let (bundle, _) = bundle(
        dir.path(),
        "b",
        &other,
        &rootfs(Version::new(1, 1, 0)),
        100,
        1,
    );
    let mut anchors = root.anchors.clone();
    let e = verify(&bundle, &anchors).unwrap_err();
    assert!(matches!(e, BundleError::UntrustedKey(id) if id == other.anchors.roots()[0].id()));

    // The root endorses the other key for model packs: its root filesystem stays refused.
    let root_key = SigningKey::from_pkcs8(&root.pkcs8).unwrap();
    let endorsement = Endorsement::create(&root_key, &other.anchors.roots()[0], "site packs");
    anchors.accept_endorsement(&endorsement).unwrap();
    let e = verify(&bundle, &anchors).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::OutOfScope {
                kind: PayloadKind::Rootfs,
                ..
            }
        ),
        "{e}"
    );
    // Endorsed for root filesystems too: bundles signed with it now verify.
    let endorsement = Endorsement::create_scoped(
        &root_key,
        &other.anchors.roots()[0],
        "site images",
        &[Scope::Rootfs],
    );
    anchors.accept_endorsement(&endorsement).unwrap();
    verify(&bundle, &anchors).unwrap();

    // A release that revokes the key: its bundles are refused as revoked, and its
    // endorsement is refused too (an endorsement on disk no longer admits it).
    let leaked = other.anchors.roots()[0];
    let revoking = anchors.clone().with_revoked(vec![leaked]);
    let e = verify(&bundle, &revoking).unwrap_err();
    assert!(
        matches!(e, BundleError::RevokedKey(id) if id == leaked.id()),
        "{e}"
    );
    assert!(e.to_string().contains("revokes"), "{e}");
    let mut fresh =
        TrustAnchors::from_roots(root.anchors.roots().to_vec()).with_revoked(vec![leaked]);
    assert!(matches!(
        fresh.accept_endorsement(&endorsement),
        Err(duli_firmware::endorsement::EndorsementError::Revoked(id)) if id == leaked.id()
    ));
    assert!(matches!(
        verify(&bundle, &fresh).unwrap_err(),
        BundleError::RevokedKey(_)
    ));

    // A self-endorsement by an unknown key admits nothing.
    let stranger = SigningKey::from_pkcs8(&generate_pkcs8().unwrap()).unwrap();
    let mut fresh = TrustAnchors::from_roots(root.anchors.roots().to_vec());
    assert!(fresh
        .accept_endorsement(&Endorsement::create(&stranger, &stranger.public_key(), "x"))
        .is_err());
}

#[test]
fn sign_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let payload = dir.path().join("p");
    fs::write(&payload, b"x").unwrap();
    let out = dir.path().join("o.duli");
    assert!(matches!(
        duli_firmware::sign(b"junk", &rootfs(Version::new(1, 0, 0)), &payload, &out),
        Err(duli_firmware::sign::SignError::Key(_))
    ));
    let mut rel = rootfs(Version::new(1, 0, 0));
    rel.hardware.clear();
    assert!(matches!(
        duli_firmware::sign(&keys.pkcs8, &rel, &payload, &out),
        Err(duli_firmware::sign::SignError::Manifest(_))
    ));
    assert!(matches!(
        duli_firmware::sign(
            &keys.pkcs8,
            &rootfs(Version::new(1, 0, 0)),
            &dir.path().join("none"),
            &out
        ),
        Err(duli_firmware::sign::SignError::Io { .. })
    ));
    assert!(!out.exists());
}
