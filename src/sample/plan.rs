//! Planning: every file of the sample tree is a self-contained job (path, class, size rule,
//! encoding, random stream), so that jobs can run in any order and give the same bytes.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::encode::Encoding;
use super::{
    class_wnids, stream_rng, val_stem, EdgeCase, EdgeKind, SampleOptions, ValLayout, MAX_JPEG_SIDE,
    TRUNCATED_MIN_SIDE,
};

/// Which random stream an image uses; part of its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    Train = 1,
    Val = 2,
    EdgeTrain = 3,
    EdgeVal = 4,
}

/// Tag for the stream that shuffles validation labels; distinct from all splits.
const VAL_ORDER_STREAM: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SizeRule {
    /// Log-uniform shorter side, aspect skewed towards 1.
    Random,
    /// Aspect exactly 3, landscape.
    Wide,
    /// Aspect exactly 3, portrait.
    Tall,
    /// Shorter side exactly `min_side`.
    Shortest,
    /// Shorter side exactly `max_side`.
    Longest,
    /// Shorter side at least [`TRUNCATED_MIN_SIDE`], ignoring `max_side`.
    Large,
}

/// A few regular train images are pinned to the extremes of the size range so
/// consumers always meet them, however few images are generated.
const EXTREME_SIZES: [SizeRule; 4] = [
    SizeRule::Wide,
    SizeRule::Tall,
    SizeRule::Shortest,
    SizeRule::Longest,
];

#[derive(Debug, Clone)]
pub(super) struct Job {
    /// Relative to the output directory, `/`-separated.
    pub(super) rel_path: String,
    pub(super) class: usize,
    pub(super) split: Split,
    /// Index within (split, class) for seeding.
    pub(super) index: u64,
    pub(super) size: SizeRule,
    pub(super) encoding: Encoding,
    /// 1-based `ILSVRC2012_val_` number for validation files.
    pub(super) val_number: Option<usize>,
}

pub(super) struct Plan {
    pub(super) jobs: Vec<Job>,
    pub(super) edge_cases: Vec<EdgeCase>,
}

pub(super) fn plan_jobs(opts: &SampleOptions) -> Plan {
    let wnids = class_wnids(opts.classes);
    let mut jobs = Vec::new();
    let mut edge_cases = Vec::new();

    for (class, wnid) in wnids.iter().enumerate() {
        for n in 0..opts.train_per_class {
            jobs.push(Job {
                rel_path: train_path(wnid, n),
                class,
                split: Split::Train,
                index: n as u64,
                size: pinned_size(opts.classes, class, n),
                encoding: Encoding::Baseline,
                val_number: None,
            });
        }
    }

    if opts.edge_cases {
        // Round-robin over classes so the edge cases land in the first classes,
        // numbered after the regular files of their class.
        for (k, kind) in EdgeKind::ALL.into_iter().enumerate() {
            let class = k % opts.classes;
            let rel_path = train_path(&wnids[class], opts.train_per_class + k / opts.classes);
            edge_cases.push(EdgeCase {
                path: rel_path.clone(),
                kind,
            });
            jobs.push(Job {
                rel_path,
                class,
                split: Split::EdgeTrain,
                index: k as u64,
                size: edge_size(kind),
                encoding: Encoding::for_edge(kind),
                val_number: None,
            });
        }
    }

    let val_labels = shuffled_val_labels(opts);
    for (i, &class) in val_labels.iter().enumerate() {
        let number = i + 1;
        jobs.push(Job {
            rel_path: val_path(opts.val_layout, &wnids[class], number),
            class,
            split: Split::Val,
            index: number as u64,
            size: SizeRule::Random,
            encoding: Encoding::Baseline,
            val_number: Some(number),
        });
    }

    if opts.edge_cases && !val_labels.is_empty() {
        let number = val_labels.len() + 1;
        let class = opts.classes - 1;
        let rel_path = val_path(opts.val_layout, &wnids[class], number);
        edge_cases.push(EdgeCase {
            path: rel_path.clone(),
            kind: EdgeKind::Truncated,
        });
        jobs.push(Job {
            rel_path,
            class,
            split: Split::EdgeVal,
            index: 0,
            size: SizeRule::Large,
            encoding: Encoding::Truncated,
            val_number: Some(number),
        });
    }

    Plan { jobs, edge_cases }
}

fn train_path(wnid: &str, n: usize) -> String {
    format!("train/{wnid}/{wnid}_{n}.JPEG")
}

fn val_path(layout: ValLayout, wnid: &str, number: usize) -> String {
    match layout {
        ValLayout::Flat => format!("val/{}.JPEG", val_stem(number)),
        ValLayout::Folders => format!("val/{wnid}/{}.JPEG", val_stem(number)),
    }
}

fn pinned_size(classes: usize, class: usize, n: usize) -> SizeRule {
    // Spread the extremes over classes so no class is special.
    EXTREME_SIZES
        .iter()
        .enumerate()
        .find(|(k, _)| k % classes == class && k / classes == n)
        .map_or(SizeRule::Random, |(_, &rule)| rule)
}

fn edge_size(kind: EdgeKind) -> SizeRule {
    match kind {
        EdgeKind::Truncated => SizeRule::Large,
        _ => SizeRule::Random,
    }
}

/// ImageNet's validation files are not grouped by class; neither are ours.
fn shuffled_val_labels(opts: &SampleOptions) -> Vec<usize> {
    let mut labels: Vec<usize> = (0..opts.classes)
        .flat_map(|class| std::iter::repeat_n(class, opts.val_per_class))
        .collect();
    let mut rng = stream_rng(opts.seed, VAL_ORDER_STREAM, 0, 0);
    labels.shuffle(&mut rng);
    labels
}

// ---------------------------------------------------------------------------
// Image sizes.

pub(super) fn pick_dimensions(
    rng: &mut ChaCha8Rng,
    rule: SizeRule,
    opts: &SampleOptions,
) -> (u32, u32) {
    let short = match rule {
        SizeRule::Random | SizeRule::Wide | SizeRule::Tall => {
            log_uniform(rng, opts.min_side, opts.max_side)
        }
        SizeRule::Shortest => opts.min_side,
        SizeRule::Longest => opts.max_side,
        SizeRule::Large => {
            // Bounded above so the truncated file stays cheap to produce.
            let lo = opts.min_side.max(TRUNCATED_MIN_SIDE);
            let hi = lo.max(opts.max_side.min(480));
            log_uniform(rng, lo, hi)
        }
    };
    let aspect = match rule {
        SizeRule::Wide | SizeRule::Tall => 3.0,
        SizeRule::Large => rng.random_range(1.0..1.5),
        // Squaring a uniform variate skews towards 1 like real photos
        // (about 60 % of images below 1.5) while still reaching 3.
        _ => 3f64.powf(rng.random::<f64>().powi(2)),
    };
    let landscape = match rule {
        SizeRule::Wide => true,
        SizeRule::Tall => false,
        _ => rng.random_bool(0.7),
    };
    let long = ((f64::from(short) * aspect).floor() as u32).clamp(short, MAX_JPEG_SIDE);
    if landscape {
        (long, short)
    } else {
        (short, long)
    }
}

fn log_uniform(rng: &mut ChaCha8Rng, lo: u32, hi: u32) -> u32 {
    if lo >= hi {
        return lo;
    }
    let (ln_lo, ln_hi) = (f64::from(lo).ln(), f64::from(hi).ln());
    let value = rng.random_range(ln_lo..=ln_hi).exp().round() as u32;
    value.clamp(lo, hi)
}
