//! Topic names: `duli/{site_id}/{device_id}/{reports|feedback|status|health}`.

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// Topics of `device_id` at `site_id` (both validated by the configuration to hold
    /// only letters, digits, `-`, `_` and `.`, so no MQTT wildcard or level separator).
    pub fn new(site_id: &str, device_id: &str) -> Topics {
        Topics {
            base: format!("duli/{site_id}/{device_id}"),
        }
    }

    /// One JSON report per study result (QoS 1).
    pub fn reports(&self) -> String {
        format!("{}/reports", self.base)
    }

    /// The radiologist's agree/disagree (QoS 1).
    pub fn feedback(&self) -> String {
        format!("{}/feedback", self.base)
    }

    /// Retained `online`/`offline` (the last will says `offline`).
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// Periodic health JSON.
    pub fn health(&self) -> String {
        format!("{}/health", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_interface() {
        let t = Topics::new("hospital-a", "edge-01");
        assert_eq!(t.reports(), "duli/hospital-a/edge-01/reports");
        assert_eq!(t.feedback(), "duli/hospital-a/edge-01/feedback");
        assert_eq!(t.status(), "duli/hospital-a/edge-01/status");
        assert_eq!(t.health(), "duli/hospital-a/edge-01/health");
    }
}
