//! DULI Edge: the on-premises chest X-ray AI appliance daemon.
//!
//! Modules in the order a study flows through them:
//!
//! - [`config`]: the TOML configuration, its defaults, environment overrides and validation.
//! - [`model`]: the records every stage shares (instances, studies, states).
//! - [`store`]: Part 10 files plus the sled index; every acknowledgement waits for its flush.
//! - [`clock`]: time helpers.
//! - [`deliver`]: the durable outbox and the channels that drain it (HL7/MLLP, MQTT, PACS push).
pub mod clock;
pub mod config;
pub mod deliver;
pub mod model;
pub mod store;
