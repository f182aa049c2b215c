//! The studies the inference stage is analysing now, so that one study is never analysed
//! by two tasks at once.
//!
//! A study that new instances reopen while it is analysed comes back from assembly once
//! their quiet period passes. With several workers, a second analysis would otherwise
//! start beside the first; whichever ended last would become the latest result, so an
//! analysis that began before the new instances could hide the one that saw them. A study
//! that comes back while it is analysed waits here until that analysis ends, then goes
//! round again (see [`InFlight::finished`]).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// The studies being analysed, each by the task `K` that analyses it (as many as the
/// engine has workers), and those waiting for their own analysis to end.
#[derive(Debug)]
pub struct InFlight<K> {
    running: HashMap<K, String>,
    waiting: HashSet<String>,
}

impl<K> Default for InFlight<K> {
    fn default() -> InFlight<K> {
        InFlight {
            running: HashMap::new(),
            waiting: HashSet::new(),
        }
    }
}

impl<K: Hash + Eq> InFlight<K> {
    /// Whether `study` is being analysed now.
    pub fn is_running(&self, study: &str) -> bool {
        self.running.values().any(|s| s == study)
    }

    /// Holds `study`, which is being analysed, until that analysis ends.
    pub fn wait(&mut self, study: String) {
        self.waiting.insert(study);
    }

    /// Notes that task `task` analyses `study`.
    pub fn started(&mut self, task: K, study: String) {
        self.running.insert(task, study);
    }

    /// Notes that task `task` ended (done, or panicked); returns its study when that
    /// study waited meanwhile and is to be analysed again now.
    pub fn finished(&mut self, task: &K) -> Option<String> {
        let study = self.running.remove(task)?;
        self.waiting.remove(&study).then_some(study)
    }

    /// Studies being analysed.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether no study is being analysed.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_study_that_comes_back_while_analysed_goes_again_once_that_ends() {
        let mut f = InFlight::default();
        f.started(1, "1.1".to_string());
        f.started(2, "1.2".to_string());
        assert!(f.is_running("1.1") && f.is_running("1.2") && !f.is_running("1.3"));
        f.wait("1.1".to_string());
        f.wait("1.1".to_string());
        assert_eq!(f.len(), 2);
        // The other study ends: nothing waited for it.
        assert_eq!(f.finished(&2), None);
        assert!(!f.is_running("1.2"));
        // The study ends (a panicked task too): once, however often it came back.
        assert_eq!(f.finished(&1).as_deref(), Some("1.1"));
        assert!(f.is_empty() && !f.is_running("1.1"));
        assert_eq!(f.finished(&1), None);
        // Analysed again, with nothing waiting now.
        f.started(3, "1.1".to_string());
        assert_eq!(f.finished(&3), None);
    }
}
