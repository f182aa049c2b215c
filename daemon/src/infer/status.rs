//! Whether the inference stage has its model loaded, shared with the console (`/healthz`,
//! the system page) so that a box waiting for its model says so instead of looking idle.

use std::sync::{Arc, RwLock};

/// The inference stage's state as others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    /// Loading has not finished yet.
    Starting,
    /// The runtime and model are loaded; studies are analysed.
    Ready,
    /// Loading failed; received studies are kept and loading is retried.
    Waiting(String),
}

impl ModelState {
    /// The state without its reason, for those who have not logged in (`/healthz`):
    /// `ready`, `starting` or `waiting for model`.
    pub fn summary(&self) -> &'static str {
        match self {
            ModelState::Starting => "starting",
            ModelState::Ready => "ready",
            ModelState::Waiting(_) => "waiting for model",
        }
    }

    /// One line for people: `ready`, `starting`, or `waiting for model: <reason>`.
    pub fn describe(&self) -> String {
        match self {
            ModelState::Starting => "starting".into(),
            ModelState::Ready => "ready".into(),
            ModelState::Waiting(why) => format!("waiting for model: {why}"),
        }
    }
}

/// A shared, cheaply cloned handle on the [`ModelState`].
#[derive(Debug, Clone)]
pub struct ModelStatus(Arc<RwLock<ModelState>>);

impl Default for ModelStatus {
    fn default() -> Self {
        ModelStatus(Arc::new(RwLock::new(ModelState::Starting)))
    }
}

impl ModelStatus {
    /// Records a new state.
    pub fn set(&self, state: ModelState) {
        match self.0.write() {
            Ok(mut s) => *s = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }

    /// The current state.
    pub fn get(&self) -> ModelState {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_state_and_describe_the_wait() {
        let a = ModelStatus::default();
        let b = a.clone();
        assert_eq!(b.get(), ModelState::Starting);
        a.set(ModelState::Waiting("no runtime at /x".into()));
        assert_eq!(b.get().describe(), "waiting for model: no runtime at /x");
        a.set(ModelState::Ready);
        assert_eq!(b.get().describe(), "ready");
    }
}
