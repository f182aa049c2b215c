//! Signed firmware bundles and the A/B slot updater of DULI Edge.
//!
//! A map of the crate, in the order an update flows through it:
//!
//! - [`keys`]: Ed25519 keys, the built-in trust anchor, key generation, [`TrustAnchors`].
//! - [`endorsement`]: how a root key lets another key sign bundles.
//! - [`scope`]: what each trusted key may sign (root keys anything, endorsed keys their
//!   endorsement's scopes).
//! - [`manifest`]: what a bundle states about its payload ([`Manifest`], [`Release`]).
//! - [`bundle`]: the on-disk format (header, manifest, payload), encode/decode only.
//! - [`mod@sign`]: the build pipeline makes a bundle from a payload and a private key.
//! - [`mod@verify`]: a device checks signature, manifest and streamed payload hash.
//! - [`policy`]: whether an authentic bundle fits this device (hardware, versions).
//! - [`bootctl`]: the boot variables behind the [`BootControl`] trait, with GRUB, U-Boot
//!   and file backends, and the reference of the bootloader's per-boot decision.
//! - [`slot`]: writing the inactive slot and reading it back.
//! - [`updater`]: the install / mark-good / rollback state machine over any backend.
//! - [`lock`]: one install, mark-good or rollback at a time.
//! - [`model_pack`]: model packs, installed on the data partition instead of a slot.
//! - [`pack_versions`]: the model-pack floor, the highest pack version installed per model,
//!   in a record only root writes.
//! - [`dir_write`]: root's writes into folders the service user owns, never through a link.
//! - [`dir_read`]: root's reads of small files there, never through a link, bounded.
//! - [`config`]: the `[firmware]` configuration section.
//!
//! `firmware/README.md` documents the bundle format, key management, the boot state
//! machine and what a power cut at each step leaves behind.

#![warn(missing_docs)]
// Outside tests no input, from the network or the disk, may reach a panic by `unwrap`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bootctl;
pub mod bundle;
pub mod config;
pub mod dir_read;
pub mod dir_write;
pub mod endorsement;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod model_pack;
pub mod pack_versions;
pub mod policy;
pub mod progress;
pub mod scope;
pub mod sign;
pub mod slot;
mod stream;
pub mod updater;
pub mod verify;
pub mod version;

pub use bootctl::{BootControl, BootState, Slot};
pub use bundle::BundleError;
pub use config::FirmwareConfig;
pub use keys::{PublicKey, SigningKey, TrustAnchors};
pub use manifest::{Manifest, PayloadKind, Release};
pub use sign::sign;
pub use stream::hash_reader;
pub use updater::{UpdateError, Updater};
pub use verify::{verify, VerifiedManifest};
pub use version::Version;
