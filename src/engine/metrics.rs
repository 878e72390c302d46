//! Accuracy counting.

// The rule a hit is counted by lives with the kernels, which count hits on the device too.
use crate::kernels::loops::classes_above;

/// Whether `label` is the top-1 and among the top-5 scores of one row of logits (or
/// probabilities). Ties count against the label, so a constant output never scores, and so
/// does NaN: a score that is not below the label's (NaN compares false with everything)
/// ranks above it, so a NaN label score ranks last and a NaN elsewhere ranks first.
pub fn top1_top5<T: PartialOrd + Copy>(scores: &[T], label: usize) -> (bool, bool) {
    hits(classes_above(scores, label))
}

/// Top-1 and top-5 from how many other classes rank at or above the label; `None` (a NaN
/// label score) is not even a top-5 hit among few classes.
fn hits(above: Option<usize>) -> (bool, bool) {
    match above {
        Some(above) => (above == 0, above < 5),
        None => (false, false),
    }
}

/// Mean cross-entropy of rows of logits, computed on the host in f64.
pub fn cross_entropy(logits: &[f32], classes: usize, labels: &[u32]) -> f64 {
    let rows = logits.chunks_exact(classes);
    let total: f64 = rows
        .zip(labels)
        .map(|(row, &label)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            max + sum.ln() - row[label as usize] as f64
        })
        .sum();
    total / labels.len().max(1) as f64
}

/// Running top-1/top-5 counts and summed loss over a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub images: u64,
    pub top1: u64,
    pub top5: u64,
    pub loss_sum: f64,
}

impl Tally {
    /// Adds a batch: its logits, labels and mean loss.
    pub fn add(&mut self, logits: &[f32], classes: usize, labels: &[u32], mean_loss: f64) {
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let (top1, top5) = top1_top5(row, label as usize);
            self.top1 += top1 as u64;
            self.top5 += top5 as u64;
        }
        self.images += labels.len() as u64;
        self.loss_sum += mean_loss * labels.len() as f64;
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }

    pub fn top1_error(&self) -> f64 {
        1.0 - self.top1 as f64 / self.images.max(1) as f64
    }

    pub fn top5_error(&self) -> f64 {
        1.0 - self.top5 as f64 / self.images.max(1) as f64
    }

    /// The counts of one batch: its logits, labels and summed loss.
    pub fn of(logits: &[f32], classes: usize, labels: &[u32], loss_sum: f64) -> Self {
        let mut tally = Self::default();
        tally.add(logits, classes, labels, 0.0);
        tally.loss_sum = loss_sum;
        tally
    }

    /// The counts of one batch from each row's count of classes at or above its label (as
    /// `classes_above` counts them; infinite for a NaN label score) and the summed loss.
    pub fn of_ranks(above: &[f32], loss_sum: f64) -> Self {
        let mut tally = Self {
            loss_sum,
            ..Self::default()
        };
        for &a in above {
            // Counts are exact in f32; infinity (a NaN label score) is no count.
            let (top1, top5) = hits(a.is_finite().then_some(a as usize));
            tally.top1 += top1 as u64;
            tally.top5 += top5 as u64;
        }
        tally.images = above.len() as u64;
        tally
    }

    /// Adds another pass's (or rank's) counts.
    pub fn merge(&mut self, other: &Tally) {
        self.images += other.images;
        self.top1 += other.top1;
        self.top5 += other.top5;
        self.loss_sum += other.loss_sum;
    }

    /// The counts as numbers to sum across ranks (exact: counts stay far below 2^53).
    pub fn to_values(&self) -> [f64; 4] {
        [
            self.images as f64,
            self.top1 as f64,
            self.top5 as f64,
            self.loss_sum,
        ]
    }

    pub fn from_values(v: [f64; 4]) -> Self {
        Self {
            images: v[0] as u64,
            top1: v[1] as u64,
            top5: v[2] as u64,
            loss_sum: v[3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts a training step makes from the kernels' label ranks equal the counts from
    /// the logits themselves, ties and NaN included.
    #[test]
    fn counts_from_label_ranks_equal_counts_from_logits() {
        let classes = 7;
        let nan = f32::NAN;
        #[rustfmt::skip]
        let logits = [
            0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4, // label 3: top-1
            0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4, // label 1: second, top-5
            0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4, // label 4: last
            0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, // constant: a tie is a miss
            0.1, nan, 0.2, 0.9, 0.0, 0.3, 0.4, // NaN elsewhere ranks above
            0.1, 0.5, 0.2, nan, 0.0, 0.3, 0.4, // NaN label: never a hit
        ];
        let labels = [3, 1, 4, 2, 3, 3];
        let rows = labels.len();
        let (mut stats, mut dlogits) = (vec![0.0; 2 * rows], vec![0.0; rows * classes]);
        crate::kernels::loops::softmax_cross_entropy(
            classes,
            rows,
            &logits,
            &labels,
            &mut stats,
            &mut dlogits,
        );
        let from_ranks = Tally::of_ranks(&stats[rows..], 0.0);
        let from_logits = Tally::of(&logits, classes, &labels, 0.0);
        assert_eq!(from_ranks, from_logits);
        assert_eq!((from_ranks.top1, from_ranks.top5), (1, 3));
        assert_eq!(stats[2 * rows - 1], f32::INFINITY);
    }

    #[test]
    fn top_k_counts_ties_against_the_label() {
        let scores = [0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4];
        assert_eq!(top1_top5(&scores, 3), (true, true));
        assert_eq!(top1_top5(&scores, 1), (false, true));
        assert_eq!(top1_top5(&scores, 0), (false, false)); // five scores above 0.1
        assert_eq!(top1_top5(&[1.0; 4], 2), (false, true));
        assert_eq!(top1_top5(&[1.0; 8], 2), (false, false));
    }

    #[test]
    fn nan_never_ranks_as_a_hit() {
        assert_eq!(top1_top5(&[f32::NAN; 10], 3), (false, false));
        assert_eq!(top1_top5(&[0.1, f32::NAN, 0.2], 1), (false, false));
        assert_eq!(top1_top5(&[0.1, f32::NAN, 0.2], 2), (false, true));
        let mut tally = Tally::default();
        tally.add(&[f32::NAN; 8], 4, &[0, 1], f64::NAN);
        assert_eq!((tally.top1, tally.top5), (0, 0));
        assert_eq!(tally.top1_error(), 1.0);
    }

    #[test]
    fn cross_entropy_matches_hand_values() {
        // Uniform logits over 4 classes: ln 4.
        let ce = cross_entropy(&[3.0; 8], 4, &[0, 3]);
        assert!((ce - 4f64.ln()).abs() < 1e-12);
        // log-sum-exp stays finite for large logits.
        let ce = cross_entropy(&[1000.0, 0.0], 2, &[0]);
        assert!(ce.abs() < 1e-12, "{ce}");
    }
}
