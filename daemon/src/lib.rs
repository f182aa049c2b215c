//! DULI Edge: the on-premises chest X-ray AI appliance daemon.
//!
//! Modules in the order a study flows through them:
//!
//! - [`config`]: the TOML configuration, its defaults, environment overrides and validation.
//! - [`privileges`]: started as root, binds the listeners then switches to the service user;
//!   [`listeners`]: those prebound listeners and the binding of the rest.
//! - [`tls`]: the one TLS profile (BCP 195) of every server and client: DICOM, console,
//!   HL7, MQTT, outbound DICOM; certificates and keys read from PEM; self-signed console
//!   certificates.
//! - [`ul`]: the DICOM upper layer — PDU framing, association negotiation, TLS, the
//!   writing half of an association (data sets streamed from disk) and the requesting side
//!   (SCU associations, outbound DICOM TLS).
//! - [`dataset_guard`]: a bounded pre-scan (nesting depth, declared lengths) of every data
//!   set from outside before dicom-rs parses it.
//! - [`iso2022`]: text in ISO 2022 code extensions (Japanese, Korean, Chinese, and ISO 8859
//!   parts switched by escape sequences), decoded for the index and C-FIND, encoded for
//!   C-FIND answers.
//! - [`dimse`]: DIMSE messages — command sets, statuses, P-DATA reassembly (codec only).
//! - [`client_key`]: the unit per-client limits count (an IPv4 address, an IPv6 /64).
//! - [`rate`]: event rates by key (queries and retrieves per calling AE and client,
//!   console uploads and feedback per user).
//! - [`receive`]: the SCP — listener, bounds on connections not yet associated,
//!   associations, the check of every request (context, role, permission), the Verification
//!   and Storage services.
//! - [`store`]: Part 10 files plus the embedded index, the only owner of persistence; every
//!   acknowledgement waits for its flush.
//! - [`scu`]: C-ECHO and C-STORE as SCU: the technicians' tools, the PACS push and C-MOVE
//!   sub-operations.
//! - [`qr`]: the Query/Retrieve SCP — C-FIND, C-MOVE and C-GET over the store's index.
//! - [`assemble`]: decides when a study is complete and hands it to the next stage.
//! - [`infer`]: pixels → model → findings, heatmaps, the study result record.
//! - [`result`]: the study result record every later stage reads.
//! - [`record`]: the record stage — a result (and each later heatmap) with its SR, SC and
//!   every outbox entry, committed in one store transaction, then broadcast.
//! - [`report`]: the domain records made from a result: the report every message and
//!   result object is built from, and a radiologist's feedback.
//! - [`results`]: the DICOM result objects (TID 1500 SR with the findings, Parametric Map
//!   and Secondary Capture of the heatmap), and the IHE IOCM rejection note that withdraws
//!   them from a study's former patient.
//! - [`site_secret`]: the box's own secret that keys the pseudonyms and report identifiers
//!   sent to the cloud and the UIDs of the result objects.
//! - [`retention`]: prunes old pixel data, and the oldest finished studies below the disk reserve.
//! - [`model`]: the records every stage shares (instances, studies, states).
//! - [`deliver`]: the channels that drain the store's durable outbox (HL7/MLLP, MQTT, PACS
//!   push), and the delivery plan of a report.
//! - [`audit`]: the append-only, hash-chained audit trail every stage writes to, kept on
//!   the box within its budget.
//! - [`accounts`]: console user accounts, roles and password hashes, shared by the console
//!   and the CLI.
//! - [`console`]: the HTTPS web console and API — logins, roles, worklist, viewer,
//!   feedback, users, audit export, live events, `/healthz` and `/metrics`; connection
//!   caps, header-read and idle timeouts, upload limits.
//! - [`web`]: the store-side gauges of `/metrics`.
//! - [`metrics`]: counters and histograms in the Prometheus text format.
//! - [`control`]: the local socket through which CLI commands reach a running daemon.
//! - [`daemon`]: wires the stages together and owns start-up and graceful shutdown.
//! - [`supervise`]: the shutdown of a group of stages, which supervises them (restarts a
//!   stage that ends unexpectedly, with backoff), keeps their heartbeats and runs the
//!   sd_notify watchdog over them and a liveness probe (the store's).
//! - [`evaluate`]: `duli evaluate`, the acceptance test of a model on a site's own labelled
//!   cases (AUC with DeLong interval, operating points, calibration, plots).
//! - [`firmware_cli`], [`health`]: `duli firmware ...` over the `duli-firmware` crate and
//!   the post-update health check.
//! - [`provision`]: `duli provision` (one-step setup, `--check` connectivity table) and
//!   [`diagnostics`]: the support bundle.
//! - [`cli_audit`]: audit records of command-line actions.
//! - [`fsutil`]: atomic, permission-aware file writes; [`stats`]: rank statistics.
//! - [`fuzz_targets`]: one entry per parser of outside bytes, for the fuzzers and the
//!   corpus replay in the test suite.
//! - [`demo`]: the newcomer's first run; [`locate`]: where the model, the OpenVINO runtime
//!   and the demo's samples are found when the configuration does not say.
//! - [`logging`], [`notify`], [`clock`]: journald/stderr logging, sd_notify, time helpers.
//! - [`malloc_arenas`]: two allocator arenas, so a burst's freed buffers do not stay resident.
#![warn(missing_docs)]
// Outside tests no input, from the network or the disk, may reach a panic by `unwrap`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod accounts;
pub mod assemble;
pub mod audit;
pub mod audit_forward;
pub mod cli_audit;
pub mod client_key;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod daemon;
pub mod dataset_guard;
pub mod deliver;
pub mod demo;
pub mod diagnostics;
pub mod dimse;
pub mod evaluate;
pub mod firmware_cli;
pub mod fsutil;
pub mod fuzz_targets;
pub mod health;
pub mod infer;
pub mod iso2022;
pub mod listeners;
pub mod locate;
pub mod logging;
pub mod malloc_arenas;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod privileges;
pub mod provision;
pub mod qr;
pub mod rate;
pub mod receive;
pub mod record;
pub mod report;
pub mod result;
pub mod results;
pub mod retention;
pub mod scu;
pub mod site_secret;
pub mod stats;
pub mod store;
pub mod supervise;
pub mod tls;
pub mod ul;
pub mod web;
