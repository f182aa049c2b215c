//! `duli evaluate`: how a model performs on a site's own labelled cases, the acceptance
//! test before go-live and after every model or threshold change.
//!
//! In flow order:
//!
//! - [`dataset`]: label folders or a `file,finding,0|1` CSV → labelled cases.
//! - [`score`]: every case through the daemon's decode path and the model, in parallel.
//! - [`metrics`]: operating points, target-sensitivity threshold, ROC curve, calibration.
//! - [`delong`]: ROC AUC with its 95% confidence interval (DeLong's; none, or an exact
//!   bound, where DeLong's would be falsely narrow).
//! - [`report`]: the per-finding report over cases (a DICOM study is one case, at its
//!   highest probability, as the daemon reports it), as JSON or a table.
//! - [`plot`]: ROC and reliability plots (SVG and PNG).
//! - [`gate`]: `--precision P --gate`, P against f32 on the same cases.
//! - [`cli`]: the command.
pub mod cli;
pub mod dataset;
pub mod delong;
pub mod gate;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod score;

pub use cli::{evaluate_cli, EvaluateOptions};
