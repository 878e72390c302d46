//! The paper's learning-rate rule: divide by 10 when the validation error stops improving.

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    pub learning_rate: f64,
    /// Best validation top-1 error so far.
    pub best_error: Option<f64>,
    pub epochs_since_best: u64,
    pub reductions: u32,
}

impl Plateau {
    pub fn new(config: &TrainConfig) -> Self {
        Self {
            learning_rate: config.learning_rate,
            best_error: None,
            epochs_since_best: 0,
            reductions: 0,
        }
    }

    /// Records an epoch's validation error; returns true when the learning rate was lowered.
    pub fn observe(&mut self, error: f64, config: &TrainConfig) -> bool {
        if self.best_error.is_none_or(|best| error < best) {
            self.best_error = Some(error);
            self.epochs_since_best = 0;
            return false;
        }
        self.epochs_since_best += 1;
        let floor = config.min_learning_rate;
        if self.epochs_since_best >= config.lr_patience.max(1) && self.learning_rate > floor {
            self.learning_rate = (self.learning_rate * config.lr_decay).max(floor);
            self.epochs_since_best = 0;
            self.reductions += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_after_patience_epochs_without_a_new_best() {
        let config = TrainConfig {
            learning_rate: 0.01,
            lr_patience: 2,
            lr_decay: 0.1,
            min_learning_rate: 1e-4,
            ..TrainConfig::default()
        };
        let mut p = Plateau::new(&config);
        let errors = [0.9, 0.8, 0.8, 0.85, 0.7, 0.75, 0.75, 0.9, 0.9, 0.9, 0.9];
        let lowered: Vec<bool> = errors.iter().map(|&e| p.observe(e, &config)).collect();
        assert_eq!(
            lowered,
            [false, false, false, true, false, false, true, false, false, false, false]
        );
        // 0.01 → 0.001 → 0.0001, then held at the floor.
        assert!((p.learning_rate - 1e-4).abs() < 1e-12);
        assert_eq!(p.reductions, 2);
        assert_eq!(p.best_error, Some(0.7));
    }
}
