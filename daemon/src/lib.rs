//! DULI Edge: the on-premises chest X-ray AI appliance daemon.
//!
//! Modules in the order a study flows through them:
//!
//! - [`config`]: the TOML configuration, its defaults, environment overrides and validation.
//! - [`model`]: the records every stage shares (instances, studies, states).
//! - [`store`]: Part 10 files plus the sled index; every acknowledgement waits for its flush.
//! - [`infer`]: pixels → model → findings, heatmaps, the study result record.
//! - [`result`]: the study result record every later stage reads.
//! - [`clock`]: time helpers.
pub mod clock;
pub mod config;
pub mod infer;
pub mod model;
pub mod result;
pub mod store;
