//! The paper's learning-rate rule: divide by 10 when the validation error stops improving;
//! optionally preceded by a linear warm-up.

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

/// The warm-up's share of the rate for the step with index `step` (0 for the run's first):
/// `(step + 1) / W` over the first `W` steps, then 1, where `W` is `lr_warmup_epochs` epochs
/// in steps, rounded (at least one when there is any warm-up).
/// A function of the step alone, like everything a resumed run recomputes, so a resume
/// continues the ramp exactly where it stopped.
pub fn warmup_factor(config: &TrainConfig, step: u64, steps_per_epoch: u64) -> f64 {
    let warmup = config.lr_warmup_epochs;
    let steps = if warmup > 0.0 {
        ((warmup * steps_per_epoch as f64).round() as u64).max(1)
    } else {
        0
    };
    if step >= steps {
        1.0
    } else {
        (step + 1) as f64 / steps as f64
    }
}

impl Plateau {
    /// The rate the step with index `step` trains with: the plateau rule's rate, scaled by
    /// the warm-up.
    pub fn rate_at(&self, config: &TrainConfig, step: u64, steps_per_epoch: u64) -> f64 {
        self.learning_rate * warmup_factor(config, step, steps_per_epoch)
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

    #[test]
    fn warm_up_rises_linearly_to_the_full_rate_then_stays() {
        let config = TrainConfig {
            learning_rate: 0.01,
            lr_warmup_epochs: 0.5,
            ..TrainConfig::default()
        };
        let p = Plateau::new(&config);
        // Half an epoch of 8 steps: 4 warm-up steps.
        let rates: Vec<f64> = (0..6).map(|step| p.rate_at(&config, step, 8)).collect();
        let expected = [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01];
        for (got, want) in rates.iter().zip(expected) {
            assert!((got - want).abs() < 1e-15, "{rates:?}");
        }
        // None by default (the paper): the first step has the full rate.
        let paper = TrainConfig::default();
        assert_eq!(
            Plateau::new(&paper).rate_at(&paper, 0, 8),
            paper.learning_rate
        );
        // Rounded to whole steps, at least one.
        let short = TrainConfig {
            lr_warmup_epochs: 0.01,
            ..config
        };
        assert_eq!(warmup_factor(&short, 0, 8), 1.0);
        assert_eq!(warmup_factor(&short, 0, 1000), 0.1);
    }
}
