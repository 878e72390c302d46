//! Charts for the evaluation stage, drawn straight into PNGs.
//!
//! Two chart kinds cover what the pipeline needs: [`LineChart`] for training curves (loss,
//! error, learning rate over steps or epochs) and [`BarChart`] for one value per class
//! (horizontal bars, one row per class). Text uses the crate's own bitmap font
//! ([`crate::text`]), so there are no font files or plotting crates involved; rendering is
//! plain integer pixel work and therefore byte-for-byte deterministic.
//!
//! [`plot_training`] turns a run directory's `metrics.csv` and `steps.csv` into
//! `loss.png`, `error.png` and `learning_rate.png`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{imageops, ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use crate::text::{draw_text, fit_text, text_size, GLYPH_HEIGHT, GLYPH_WIDTH};
use crate::train::rundir::{EpochRow, LogError, RunDir};

/// Distinct, colour-blind-friendly series colours (the "tab10" palette's first entries).
pub const PALETTE: [Rgb<u8>; 6] = [
    Rgb([31, 119, 180]),  // blue
    Rgb([255, 127, 14]),  // orange
    Rgb([44, 160, 44]),   // green
    Rgb([214, 39, 40]),   // red
    Rgb([148, 103, 189]), // purple
    Rgb([140, 86, 75]),   // brown
];

/// Size of the charts [`plot_training`] writes.
pub const TRAINING_CHART_SIZE: (u32, u32) = (960, 540);

/// At most this many points of `steps.csv` are drawn; longer logs are averaged in buckets.
pub const MAX_STEP_POINTS: usize = 2000;

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const TITLE_COLOR: Rgb<u8> = Rgb([20, 20, 20]);
const LABEL_COLOR: Rgb<u8> = Rgb([50, 50, 50]);
const TICK_COLOR: Rgb<u8> = Rgb([90, 90, 90]);
const AXIS_COLOR: Rgb<u8> = Rgb([70, 70, 70]);
const GRID_COLOR: Rgb<u8> = Rgb([225, 225, 225]);
const MINOR_GRID_COLOR: Rgb<u8> = Rgb([242, 242, 242]);
const ROW_SHADE: Rgb<u8> = Rgb([246, 246, 246]);
const BAR_COLOR: Rgb<u8> = Rgb([70, 130, 180]);
/// Per-step loss is drawn light so that the per-epoch curves on top of it stand out.
const STEP_LOSS_COLOR: Rgb<u8> = Rgb([160, 200, 228]);

/// Width in pixels of drawn lines.
const LINE_WIDTH: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot encode {path} as PNG")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::shards::ShardError,
    },
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One named line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// (x, y) in drawing order. Non-finite values (and, on a log axis, y <= 0) are not drawn
    /// and break the line.
    pub points: Vec<(f64, f64)>,
    pub color: Rgb<u8>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, color: Rgb<u8>) -> Self {
        Self {
            name: name.into(),
            points,
            color,
        }
    }
}

/// Lines over a shared x axis, with a legend under the title.
#[derive(Debug, Clone)]
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Drawn in order, so later series are on top. Series with nothing drawable are left out
    /// of the plot and the legend.
    pub series: Vec<Series>,
    /// Logarithmic y axis with ticks at powers of ten (for learning rates).
    pub log_y: bool,
}

/// Horizontal bars, one row per label, for values in [0, 1] shown as percentages.
#[derive(Debug, Clone)]
pub struct BarChart<'a> {
    pub title: &'a str,
    /// Names the values; written under the (horizontal) value axis.
    pub y_label: &'a str,
    /// (label, value in [0, 1]). A non-finite value gets an empty bar marked "n/a".
    pub bars: Vec<(String, f64)>,
    /// Sort rows by value, smallest on top and non-numbers at the bottom (stable, so ties
    /// keep their order).
    pub sorted: bool,
}

impl LineChart<'_> {
    /// Draws the chart on a `width`×`height` white image.
    #[must_use]
    pub fn render(&self, width: u32, height: u32) -> RgbImage {
        let mut image = RgbImage::from_pixel(width, height, BACKGROUND);
        let s = text_scale(width, height);
        let (w, h) = (i64::from(width), i64::from(height));
        let line_h = i64::from(text_size("", s).1);
        let pad = 4 * i64::from(s) + 4;
        let tick_len = 2 * i64::from(s) + 2;

        // Only what can be drawn takes part in ranges and the legend; `None` breaks a line.
        let series: Vec<_> = self
            .series
            .iter()
            .map(|series| {
                let points: Vec<_> = series
                    .points
                    .iter()
                    .map(|&(x, y)| drawable(x, y, self.log_y).then_some((x, y)))
                    .collect();
                (series, points)
            })
            .filter(|(_, points)| points.iter().any(Option::is_some))
            .collect();

        // Vertical layout: title, legend, plot, tick labels, x label.
        let mut top = pad;
        top += draw_centered(&mut image, w / 2, top, self.title, TITLE_COLOR, s + 1) + pad / 2;
        let legend: Vec<(&str, Rgb<u8>)> = series
            .iter()
            .map(|(series, _)| (series.name.as_str(), series.color))
            .collect();
        top += draw_legend(&mut image, pad, w - pad, top, &legend, s);
        top += pad / 2 + line_h / 2; // room for the top tick label, centred on its tick
        let bottom = h - pad - line_h - pad - line_h - tick_len - 3;

        // The y axis decides the left margin (its labels' width); the x axis the right one.
        let points = || {
            series
                .iter()
                .flat_map(|(_, points)| points.iter().flatten())
        };
        let y_axis = if self.log_y {
            log_axis(
                points().map(|p| p.1),
                ((bottom - top) / (2 * line_h)).max(2),
            )
        } else {
            linear_axis(
                points().map(|p| p.1),
                ((bottom - top) / (3 * line_h)).max(2),
            )
        };
        let y_labels: Vec<String> = y_axis.ticks.iter().map(|&t| y_axis.label(t)).collect();
        let y_labels_w = y_labels.iter().map(|l| text_width(l, s)).max().unwrap_or(0);
        let left = pad + line_h + pad + y_labels_w + tick_len + 2;
        let x_axis = fitting_x_axis(points().map(|p| p.0), left, w - pad, s);
        let last_x_label = x_axis
            .ticks
            .last()
            .map_or(0, |&t| text_width(&x_axis.label(t), s));
        let right = w - pad - last_x_label / 2;
        let plot = Rect {
            left,
            top,
            right,
            bottom,
        };

        // Grid, then axes and tick labels, then the data on top.
        for &tick in &y_axis.minor {
            let y = plot.y(&y_axis, tick);
            draw_hline(&mut image, plot.left, plot.right, y, MINOR_GRID_COLOR);
        }
        for (&tick, label) in y_axis.ticks.iter().zip(&y_labels) {
            let y = plot.y(&y_axis, tick);
            draw_hline(&mut image, plot.left, plot.right, y, GRID_COLOR);
            draw_hline(
                &mut image,
                plot.left - tick_len,
                plot.left - 1,
                y,
                AXIS_COLOR,
            );
            let x = plot.left - tick_len - 2 - text_width(label, s);
            draw_text(&mut image, x, y - line_h / 2 + 1, label, TICK_COLOR, s);
        }
        for &tick in &x_axis.ticks {
            let x = plot.x(&x_axis, tick);
            draw_vline(&mut image, x, plot.top, plot.bottom, GRID_COLOR);
            draw_vline(
                &mut image,
                x,
                plot.bottom + 1,
                plot.bottom + tick_len,
                AXIS_COLOR,
            );
            let label = x_axis.label(tick);
            let y = plot.bottom + tick_len + 3;
            draw_centered(&mut image, x, y, &label, TICK_COLOR, s);
        }
        draw_vline(&mut image, plot.left, plot.top, plot.bottom, AXIS_COLOR);
        draw_hline(&mut image, plot.left, plot.right, plot.bottom, AXIS_COLOR);

        let plot_width = plot.right - plot.left;
        for (series, points) in &series {
            let pixels: Vec<Option<(i64, i64)>> = points
                .iter()
                .map(|p| p.map(|(x, y)| (plot.x(&x_axis, x), plot.y(&y_axis, y))))
                .collect();
            for pair in pixels.windows(2) {
                if let [Some(a), Some(b)] = pair {
                    draw_line(&mut image, *a, *b, series.color, &plot);
                }
            }
            // Markers while points are sparse; they also make single points visible.
            let count = pixels.iter().flatten().count();
            if i64::try_from(count).unwrap_or(i64::MAX) <= (plot_width / 12).max(1) {
                let r = i64::from(s) + 1;
                for &(x, y) in pixels.iter().flatten() {
                    fill_rect(&mut image, x - r, y - r, x + r + 1, y + r + 1, series.color);
                }
            }
        }

        // Axis labels: x centred under the tick labels, y rotated along the left edge.
        let x_label_y = h - pad - line_h;
        draw_centered(
            &mut image,
            (plot.left + plot.right) / 2,
            x_label_y,
            self.x_label,
            LABEL_COLOR,
            s,
        );
        let y_label_len = text_width(self.y_label, s);
        let y_label_top = (plot.top + plot.bottom - y_label_len) / 2;
        draw_text_up(&mut image, pad, y_label_top, self.y_label, LABEL_COLOR, s);
        image
    }
}

impl BarChart<'_> {
    /// Draws the chart `width` wide and at least `height` tall: every label gets a row, so the
    /// image grows with the number of bars.
    #[must_use]
    pub fn render(&self, width: u32, height: u32) -> RgbImage {
        let s = text_scale(width, 0);
        let w = i64::from(width);
        let line_h = i64::from(text_size("", s).1);
        let pad = 4 * i64::from(s) + 4;
        let tick_len = 2 * i64::from(s) + 2;
        let row_h = 12 * i64::from(s);
        let bar_h = 8 * i64::from(s);

        let mut bars: Vec<(&str, f64)> = self.bars.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        if self.sorted {
            // Missing values (NaN, whatever its sign bit) go last.
            bars.sort_by(|a, b| {
                (a.1.is_nan(), a.1)
                    .partial_cmp(&(b.1.is_nan(), b.1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        }
        let rows = i64::try_from(bars.len()).unwrap_or(i64::MAX);

        let title_h = i64::from(text_size("", s + 1).1);
        let top = pad + title_h + pad;
        let rows_bottom = top + rows.max(1).saturating_mul(row_h);
        let needed = rows_bottom + tick_len + 3 + line_h + pad / 2 + line_h + pad;
        let height = u32::try_from(needed).unwrap_or(u32::MAX).max(height);
        let mut image = RgbImage::from_pixel(width, height, BACKGROUND);
        draw_centered(&mut image, w / 2, pad, self.title, TITLE_COLOR, s + 1);

        // Labels take what they need, up to 40% of the width; values are written past the bar.
        let label_w = bars
            .iter()
            .map(|(label, _)| text_width(label, s))
            .max()
            .unwrap_or(0)
            .min(w * 2 / 5);
        let left = pad + label_w + pad / 2;
        let right = w - pad - text_width("100.0%", s) - pad / 2;
        let max_value = bars
            .iter()
            .map(|b| b.1)
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max);
        let target = ((right - left) / (6 * i64::from(GLYPH_WIDTH * s))).max(2);
        let axis = linear_axis([0.0, max_value * 100.0].into_iter(), target);
        let plot = Rect {
            left,
            top,
            right,
            bottom: rows_bottom,
        };

        for i in (1..rows).step_by(2) {
            let y = top + i * row_h;
            fill_rect(&mut image, 0, y, w, y + row_h, ROW_SHADE);
        }
        for &tick in &axis.ticks {
            let x = plot.x(&axis, tick);
            draw_vline(&mut image, x, plot.top, plot.bottom, GRID_COLOR);
            draw_vline(
                &mut image,
                x,
                plot.bottom + 1,
                plot.bottom + tick_len,
                AXIS_COLOR,
            );
            let label = format!("{}%", axis.label(tick));
            draw_centered(
                &mut image,
                x,
                plot.bottom + tick_len + 3,
                &label,
                TICK_COLOR,
                s,
            );
        }
        for (row, (label, value)) in (0i64..).zip(&bars) {
            let y = top + row * row_h;
            let text_y = y + (row_h - line_h) / 2 + i64::from(s);
            let label = fit_text(label, u32::try_from(label_w).unwrap_or(0), s);
            let label_x = left - pad / 2 - text_width(&label, s);
            draw_text(&mut image, label_x, text_y, &label, LABEL_COLOR, s);
            let (end, text) = if value.is_finite() {
                let end = plot.x(&axis, value.max(0.0) * 100.0);
                (end, format!("{:.1}%", value * 100.0))
            } else {
                (left, "n/a".to_string())
            };
            let bar_top = y + (row_h - bar_h) / 2;
            fill_rect(
                &mut image,
                left,
                bar_top,
                end + 1,
                bar_top + bar_h,
                BAR_COLOR,
            );
            draw_text(&mut image, end + pad / 2, text_y, &text, LABEL_COLOR, s);
        }
        if bars.is_empty() {
            let y = top + (row_h - line_h) / 2;
            draw_centered(&mut image, (left + right) / 2, y, "no data", TICK_COLOR, s);
        }
        draw_vline(&mut image, plot.left, plot.top, plot.bottom, AXIS_COLOR);
        draw_hline(&mut image, plot.left, plot.right, plot.bottom, AXIS_COLOR);
        let label_y = i64::from(height) - pad - line_h;
        draw_centered(
            &mut image,
            (left + right) / 2,
            label_y,
            self.y_label,
            LABEL_COLOR,
            s,
        );
        image
    }
}

/// Writes `image` as a PNG at `path` atomically (`path.tmp`, then a rename).
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), PlotError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|source| PlotError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    crate::shards::write_atomic(path, &bytes).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Training curves from a run directory's logs; returns the files written.
///
/// Reads `metrics.csv` (one row per epoch) and, when it exists, `steps.csv` (one row per step,
/// averaged down to at most [`MAX_STEP_POINTS`] points), and writes `loss.png`, `error.png`
/// and `learning_rate.png` into `out_dir` (created if missing).
pub fn plot_training(run: &RunDir, out_dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let rows = run.read_metrics()?;
    let column = |f: fn(&EpochRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let epoch = &column(|r| r.epoch as f64);
    let step = &column(|r| r.step as f64);
    let lr = &column(|r| r.learning_rate);
    let train_loss = &column(|r| r.train_loss);
    let train_top1 = &column(|r| r.train_top1_error);
    let val_loss = &column(|r| r.val_loss);
    let val_top1 = &column(|r| r.val_top1_error);
    let val_top5 = &column(|r| r.val_top5_error);
    let steps = match run.read_steps() {
        Ok(rows) => Some([
            rows.iter().map(|r| r.step as f64).collect::<Vec<_>>(),
            rows.iter().map(|r| r.loss as f64).collect(),
        ]),
        Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error.into()),
    };

    let zip = |x: &[f64], y: &[f64], factor: f64| -> Vec<(f64, f64)> {
        x.iter().zip(y).map(|(&x, &y)| (x, y * factor)).collect()
    };
    let mut loss_series = Vec::new();
    if let Some(columns) = &steps {
        let points = downsample(&zip(&columns[0], &columns[1], 1.0), MAX_STEP_POINTS);
        loss_series.push(Series::new(
            "train loss (per step)",
            points,
            STEP_LOSS_COLOR,
        ));
    }
    loss_series.push(Series::new(
        "train loss (epoch mean)",
        zip(step, train_loss, 1.0),
        PALETTE[0],
    ));
    loss_series.push(Series::new(
        "val loss",
        zip(step, val_loss, 1.0),
        PALETTE[1],
    ));
    let charts = [
        (
            "loss.png",
            LineChart {
                title: "Loss",
                x_label: "step",
                y_label: "cross-entropy loss",
                series: loss_series,
                log_y: false,
            },
        ),
        (
            "error.png",
            LineChart {
                title: "Error",
                x_label: "epoch",
                y_label: "error (%)",
                series: vec![
                    Series::new("train top-1", zip(epoch, train_top1, 100.0), PALETTE[0]),
                    Series::new("val top-1", zip(epoch, val_top1, 100.0), PALETTE[1]),
                    Series::new("val top-5", zip(epoch, val_top5, 100.0), PALETTE[2]),
                ],
                log_y: false,
            },
        ),
        (
            "learning_rate.png",
            LineChart {
                title: "Learning rate",
                x_label: "epoch",
                y_label: "learning rate",
                series: vec![Series::new(
                    "learning rate",
                    zip(epoch, lr, 1.0),
                    PALETTE[4],
                )],
                log_y: true,
            },
        ),
    ];

    fs::create_dir_all(out_dir).map_err(|source| PlotError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let (width, height) = TRAINING_CHART_SIZE;
    let mut written = Vec::new();
    for (name, chart) in charts {
        let path = out_dir.join(name);
        save_png(&chart.render(width, height), &path)?;
        written.push(path);
    }
    Ok(written)
}

/// Averages consecutive buckets of `points` (x and y separately, over finite values) so that at
/// most `max_points` remain; returns `points` unchanged when they already fit.
fn downsample(points: &[(f64, f64)], max_points: usize) -> Vec<(f64, f64)> {
    if points.len() <= max_points || max_points == 0 {
        return points.to_vec();
    }
    let bucket = points.len().div_ceil(max_points);
    points
        .chunks(bucket)
        .map(|chunk| {
            (
                finite_mean(chunk.iter().map(|p| p.0)),
                finite_mean(chunk.iter().map(|p| p.1)),
            )
        })
        .collect()
}

/// Mean of the finite values; NaN when there are none.
fn finite_mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values
        .filter(|v| v.is_finite())
        .fold((0.0, 0u64), |(sum, count), v| (sum + v, count + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

/// Text scale for a chart: 1 for small images, 2 from about 960×540 up, and so on.
fn text_scale(width: u32, height: u32) -> u32 {
    let by_height = if height == 0 { u32::MAX } else { height / 270 };
    (width / 480).min(by_height).clamp(1, 4)
}

fn text_width(text: &str, scale: u32) -> i64 {
    i64::from(text_size(text, scale).0)
}

/// Whether (x, y) can be placed on the chart.
fn drawable(x: f64, y: f64, log_y: bool) -> bool {
    x.is_finite() && y.is_finite() && (!log_y || y > 0.0)
}

/// A numeric axis: its range, tick positions and how to label them.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    /// The range the axis spans (the outermost ticks, which cover the data).
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    /// Lighter grid lines between ticks (log axes: 2×…9× each power of ten).
    minor: Vec<f64>,
    log: bool,
    /// Distance between ticks of a linear axis (unused on log axes).
    step: f64,
}

impl Axis {
    /// Where `value` lies along the axis, 0 at `lo` and 1 at `hi`.
    fn fraction(&self, value: f64) -> f64 {
        let (value, lo, hi) = if self.log {
            (value.log10(), self.lo.log10(), self.hi.log10())
        } else {
            (value, self.lo, self.hi)
        };
        (value - lo) / (hi - lo)
    }

    fn label(&self, tick: f64) -> String {
        if self.log {
            let exponent = tick.log10().round() as i32;
            if (-4..=4).contains(&exponent) {
                format!("{}", 10f64.powi(exponent))
            } else {
                format!("1e{exponent}")
            }
        } else {
            // Ticks are multiples of the step, so anything this close to zero is zero ("-0.0").
            if tick.abs() < self.step * 1e-6 {
                return "0".to_string();
            }
            // Step counts in the hundreds of thousands read better as "200k" than "200000".
            let (unit, suffix) = if self.step >= 1e6 {
                (1e6, "M")
            } else if self.step >= 1e3 {
                (1e3, "k")
            } else {
                (1.0, "")
            };
            let decimals = (-(self.step / unit).log10().floor()).max(0.0) as usize;
            format!("{:.*}{suffix}", decimals, tick / unit)
        }
    }
}

/// A linear axis with 1-2-5 steps whose outermost ticks cover all finite `values`, aiming for
/// about `target` intervals. A constant (or empty) range is padded so it still has extent.
fn linear_axis(values: impl Iterator<Item = f64>, target: i64) -> Axis {
    let (mut lo, mut hi) = finite_range(values).unwrap_or((0.0, 1.0));
    if hi - lo <= hi.abs().max(lo.abs()) * 1e-9 {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    if !(hi - lo).is_finite() {
        (lo, hi) = (-f64::MAX / 4.0, f64::MAX / 4.0);
    }
    let step = nice_step((hi - lo) / target.max(1) as f64);
    // Rounding slack so that values a hair past a tick do not add a whole empty interval.
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil().max(first + 1.0);
    let ticks: Vec<f64> = (0..=((last - first) as i64).min(1000))
        .map(|i| (first + i as f64) * step)
        .collect();
    Axis {
        lo: first * step,
        hi: last * step,
        minor: Vec::new(),
        log: false,
        step,
        ticks,
    }
}

/// The smallest of 1, 2, 5 × 10^k that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let mantissa = raw / magnitude;
    let nice = if mantissa <= 1.0 + 1e-9 {
        1.0
    } else if mantissa <= 2.0 + 1e-9 {
        2.0
    } else if mantissa <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A log axis from a power of ten to a power of ten covering the positive finite `values`,
/// with ticks every one (or, for wide ranges, every few) decades. A range within one decade
/// is widened to at least two so the line does not sit on the frame.
fn log_axis(values: impl Iterator<Item = f64>, target: i64) -> Axis {
    let (lo, hi) = finite_range(values.filter(|&v| v > 0.0)).unwrap_or((1.0, 10.0));
    let mut first = lo.log10().floor() as i64;
    let mut last = hi.log10().ceil() as i64;
    if last - first < 2 && lo.log10() - (first as f64) < 1e-9 {
        first -= 1; // the lowest value sits on a power of ten: give it room below
    }
    if last - first < 2 && last as f64 - hi.log10() < 1e-9 {
        last += 1; // ... and above
    }
    let every = ((last - first) + target - 1) / target.max(1);
    let every = every.max(1);
    let last = first + (last - first + every - 1) / every * every;
    let ticks: Vec<f64> = (first..=last)
        .step_by(usize::try_from(every).unwrap_or(1))
        .map(|e| 10f64.powi(e as i32))
        .collect();
    let minor = if every == 1 && last - first <= 6 {
        (first..last)
            .flat_map(|e| (2..10).map(move |m| f64::from(m) * 10f64.powi(e as i32)))
            .collect()
    } else {
        Vec::new()
    };
    Axis {
        lo: 10f64.powi(first as i32),
        hi: 10f64.powi(last as i32),
        ticks,
        minor,
        log: true,
        step: 0.0,
    }
}

/// The x axis with as many ticks as fit between `left` and `right` without labels touching.
fn fitting_x_axis(
    values: impl Iterator<Item = f64> + Clone,
    left: i64,
    right: i64,
    s: u32,
) -> Axis {
    let gap = 2 * i64::from(GLYPH_WIDTH * s);
    let mut target = ((right - left) / (6 * i64::from(GLYPH_WIDTH * s))).max(2);
    loop {
        let axis = linear_axis(values.clone(), target);
        let widest = axis
            .ticks
            .iter()
            .map(|&t| text_width(&axis.label(t), s))
            .max();
        let spacing = (right - left) / (axis.ticks.len().max(2) as i64 - 1);
        if target <= 2 || widest.unwrap_or(0) + gap <= spacing {
            return axis;
        }
        target -= 1;
    }
}

fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |range, v| match range {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// The plot area in pixels, edges inclusive.
struct Rect {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Rect {
    fn x(&self, axis: &Axis, value: f64) -> i64 {
        self.left + (axis.fraction(value) * (self.right - self.left) as f64).round() as i64
    }

    fn y(&self, axis: &Axis, value: f64) -> i64 {
        self.bottom - (axis.fraction(value) * (self.bottom - self.top) as f64).round() as i64
    }

    fn contains(&self, x: i64, y: i64) -> bool {
        (self.left..=self.right).contains(&x) && (self.top..=self.bottom).contains(&y)
    }
}

/// Draws the legend entries (swatch + name) left to right from (left, top), wrapping before
/// `right`; returns the height used (0 without entries).
fn draw_legend(
    image: &mut RgbImage,
    left: i64,
    right: i64,
    top: i64,
    entries: &[(&str, Rgb<u8>)],
    s: u32,
) -> i64 {
    if entries.is_empty() {
        return 0;
    }
    let line_h = i64::from(GLYPH_HEIGHT * s) + 2 * i64::from(s);
    let swatch = 7 * i64::from(s);
    let gap = 3 * i64::from(GLYPH_WIDTH * s);
    let widths: Vec<i64> = entries
        .iter()
        .map(|(name, _)| swatch + i64::from(s) * 4 + text_width(name, s))
        .collect();
    // Lay out rows first so that each row can be centred.
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0;
    for (i, &width) in widths.iter().enumerate() {
        let row = rows.last_mut().expect("rows starts non-empty");
        if !row.is_empty() && used + gap + width > right - left {
            rows.push(vec![i]);
            used = width;
        } else {
            used += if row.is_empty() { width } else { gap + width };
            row.push(i);
        }
    }
    for (r, row) in (0i64..).zip(&rows) {
        let row_width: i64 =
            row.iter().map(|&i| widths[i]).sum::<i64>() + gap * (row.len() as i64 - 1);
        let mut x = left + ((right - left) - row_width).max(0) / 2;
        let y = top + r * line_h;
        for &i in row {
            let (name, color) = entries[i];
            fill_rect(image, x, y, x + swatch, y + swatch, color);
            draw_text(
                image,
                x + swatch + 4 * i64::from(s),
                y,
                name,
                LABEL_COLOR,
                s,
            );
            x += widths[i] + gap;
        }
    }
    rows.len() as i64 * line_h
}

/// Draws `text` centred on `center_x` with its top at `y`; returns the text's height.
fn draw_centered(
    image: &mut RgbImage,
    center_x: i64,
    y: i64,
    text: &str,
    color: Rgb<u8>,
    s: u32,
) -> i64 {
    let (w, h) = text_size(text, s);
    draw_text(image, center_x - i64::from(w) / 2, y, text, color, s);
    i64::from(h)
}

/// Draws `text` rotated a quarter turn anticlockwise (reading bottom to top) with the rotated
/// box's top-left corner at (x, y).
fn draw_text_up(image: &mut RgbImage, x: i64, y: i64, text: &str, color: Rgb<u8>, s: u32) {
    let (w, h) = text_size(text, s);
    if w == 0 || h == 0 {
        return;
    }
    let mut flat = RgbImage::new(w, h);
    draw_text(&mut flat, 0, 0, text, Rgb([255, 255, 255]), s);
    let rotated = imageops::rotate270(&flat);
    for (px, py, pixel) in rotated.enumerate_pixels() {
        if pixel[0] != 0 {
            put(image, x + i64::from(px), y + i64::from(py), color);
        }
    }
}

/// A line `LINE_WIDTH` pixels wide from `a` to `b` (Bresenham with a square brush), clipped
/// to `clip`.
fn draw_line(image: &mut RgbImage, a: (i64, i64), b: (i64, i64), color: Rgb<u8>, clip: &Rect) {
    let (mut x, mut y) = a;
    let (dx, dy) = ((b.0 - x).abs(), -(b.1 - y).abs());
    let (sx, sy) = (if x < b.0 { 1 } else { -1 }, if y < b.1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        for ox in 0..LINE_WIDTH {
            for oy in 0..LINE_WIDTH {
                let (px, py) = (x + ox - LINE_WIDTH / 2, y + oy - LINE_WIDTH / 2);
                if clip.contains(px, py) {
                    put(image, px, py, color);
                }
            }
        }
        if (x, y) == b {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn draw_hline(image: &mut RgbImage, x0: i64, x1: i64, y: i64, color: Rgb<u8>) {
    fill_rect(image, x0, y, x1 + 1, y + 1, color);
}

fn draw_vline(image: &mut RgbImage, x: i64, y0: i64, y1: i64, color: Rgb<u8>) {
    fill_rect(image, x, y0, x + 1, y1 + 1, color);
}

/// Fills [x0, x1) × [y0, y1), clipped to the image.
fn fill_rect(image: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    let x0 = x0.max(0);
    let y0 = y0.max(0);
    let x1 = x1.min(i64::from(image.width()));
    let y1 = y1.min(i64::from(image.height()));
    for y in y0..y1 {
        for x in x0..x1 {
            put(image, x, y, color);
        }
    }
}

fn put(image: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y)) {
        if x < image.width() && y < image.height() {
            image.put_pixel(x, y, color);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>, log_y: bool) -> LineChart<'static> {
        LineChart {
            title: "Test chart",
            x_label: "step",
            y_label: "value",
            series,
            log_y,
        }
    }

    fn has_color(image: &RgbImage, color: Rgb<u8>) -> bool {
        image.pixels().any(|p| *p == color)
    }

    fn is_nice(step: f64) -> bool {
        let mantissa = step / 10f64.powf(step.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .iter()
            .any(|m| (mantissa - m).abs() < 1e-6)
    }

    #[test]
    fn linear_ticks_are_nice_and_cover_the_range() {
        let ranges = [
            (0.0, 1.0),
            (1.0, 216.0),
            (0.013, 0.91),
            (-3.5, 2.25),
            (1.2345, 1.2346),
            (0.0, 900_000.0),
            (5.0, 5.0),
            (-7.0, -7.0),
            (0.0, 0.0),
            (1e-9, 3e-9),
        ];
        for (lo, hi) in ranges {
            for target in [2, 5, 8, 13] {
                let axis = linear_axis([lo, hi].into_iter(), target);
                let ticks = &axis.ticks;
                assert!(ticks.len() >= 2, "{lo}..{hi}: {ticks:?}");
                // Ticks are multiples of the step, up to floating-point rounding.
                let slack = (ticks[1] - ticks[0]) * 1e-9;
                assert!(
                    ticks[0] <= lo + slack && *ticks.last().unwrap() >= hi - slack,
                    "{lo}..{hi}: {ticks:?}"
                );
                assert_eq!((axis.lo, axis.hi), (ticks[0], *ticks.last().unwrap()));
                assert!(axis.hi > axis.lo);
                let step = ticks[1] - ticks[0];
                assert!(is_nice(step), "{lo}..{hi}: step {step}");
                for pair in ticks.windows(2) {
                    assert!(((pair[1] - pair[0]) - step).abs() <= step * 1e-6);
                }
                // No more than about twice the target, and the data fills the axis decently.
                assert!(
                    ticks.len() as i64 <= 2 * target + 2,
                    "{lo}..{hi}: {ticks:?}"
                );
            }
        }
        let axis = linear_axis([0.0, 100.0].into_iter(), 5);
        assert_eq!(axis.ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let labels: Vec<String> = linear_axis([-0.3, 0.3].into_iter(), 6)
            .ticks
            .iter()
            .map(|&t| linear_axis([-0.3, 0.3].into_iter(), 6).label(t))
            .collect();
        assert_eq!(labels, ["-0.3", "-0.2", "-0.1", "0", "0.1", "0.2", "0.3"]);
        let axis = linear_axis([0.0, 900_810.0].into_iter(), 5);
        let labels: Vec<String> = axis.ticks.iter().map(|&t| axis.label(t)).collect();
        assert_eq!(labels, ["0", "200k", "400k", "600k", "800k", "1000k"]);
        let axis = linear_axis([0.0, 2.5e7].into_iter(), 5);
        assert_eq!(axis.label(axis.ticks[1]), "5M");
    }

    #[test]
    fn log_ticks_are_powers_of_ten_covering_the_range() {
        let axis = log_axis([0.01, 0.0001, 0.001].into_iter(), 8);
        assert_eq!(axis.ticks.len(), 3);
        assert!(axis.lo <= 0.0001 && axis.hi >= 0.01);
        for &tick in &axis.ticks {
            let exponent = tick.log10();
            assert!((exponent - exponent.round()).abs() < 1e-9, "{tick}");
        }
        let labels: Vec<String> = axis.ticks.iter().map(|&t| axis.label(t)).collect();
        assert!(labels.contains(&"0.001".to_string()), "{labels:?}");
        // A constant series gets room on both sides; zeros and negatives are ignored.
        let axis = log_axis([0.01, 0.01, 0.0, -1.0].into_iter(), 8);
        assert!(axis.lo < 0.01 && axis.hi > 0.01, "{axis:?}");
        // Wide ranges thin out the ticks.
        let axis = log_axis([1e-12, 1e12].into_iter(), 5);
        assert!(axis.ticks.len() <= 6 && axis.lo <= 1e-12 && axis.hi >= 1e12);
        assert_eq!(axis.label(1e-12), "1e-12");
    }

    #[test]
    fn rendering_is_deterministic_and_draws_every_series() {
        let colors = [PALETTE[0], PALETTE[1], PALETTE[2]];
        let make = || {
            chart(
                vec![
                    Series::new(
                        "rising",
                        (0..50).map(|i| (i as f64, i as f64)).collect(),
                        colors[0],
                    ),
                    Series::new(
                        "falling",
                        (0..50).map(|i| (i as f64, 50.0 - i as f64)).collect(),
                        colors[1],
                    ),
                    Series::new("few", vec![(10.0, 5.0), (40.0, 45.0)], colors[2]),
                ],
                false,
            )
            .render(400, 300)
        };
        let image = make();
        assert_eq!(image.dimensions(), (400, 300));
        assert_eq!(image.as_raw(), make().as_raw());
        for color in colors {
            // In the middle of the image (the plot area), not just the legend swatches.
            let inside = (100..380)
                .flat_map(|x| (80..250).map(move |y| (x, y)))
                .any(|(x, y)| *image.get_pixel(x, y) == color);
            assert!(inside, "{color:?} missing from the plot area");
        }
        let mut bytes = Vec::new();
        PngEncoder::new(&mut bytes)
            .write_image(image.as_raw(), 400, 300, ExtendedColorType::Rgb8)
            .unwrap();
        let mut again = Vec::new();
        PngEncoder::new(&mut again)
            .write_image(make().as_raw(), 400, 300, ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(bytes, again);
    }

    #[test]
    fn awkward_inputs_do_not_panic() {
        let red = PALETTE[3];
        let awkward = [
            vec![],
            vec![Series::new("empty", vec![], red)],
            vec![Series::new("single", vec![(3.0, 4.0)], red)],
            vec![Series::new(
                "constant",
                vec![(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)],
                red,
            )],
            vec![Series::new(
                "non-finite",
                vec![
                    (0.0, f64::NAN),
                    (1.0, 1.0),
                    (f64::INFINITY, 2.0),
                    (3.0, f64::NEG_INFINITY),
                    (4.0, 0.5),
                ],
                red,
            )],
            vec![Series::new("all nan", vec![(f64::NAN, f64::NAN)], red)],
            vec![Series::new(
                "huge",
                vec![(-1e300, 1e300), (1e300, -1e300)],
                red,
            )],
            vec![Series::new("same x", vec![(1.0, 1.0), (1.0, 2.0)], red)],
        ];
        for series in awkward {
            for log_y in [false, true] {
                for (w, h) in [(320, 200), (960, 540), (40, 30), (1, 1), (0, 0)] {
                    let image = chart(series.clone(), log_y).render(w, h);
                    assert_eq!(image.dimensions(), (w, h));
                }
            }
        }
        // A single point still shows up (as a marker).
        let image =
            chart(vec![Series::new("single", vec![(3.0, 4.0)], red)], false).render(320, 200);
        assert!(has_color(&image, red));
    }

    #[test]
    fn bar_chart_grows_with_its_rows_and_sorts() {
        let bars: Vec<(String, f64)> = (0..40)
            .map(|i| {
                (
                    format!("class number {i} with a long name"),
                    f64::from(i % 7) / 6.0,
                )
            })
            .collect();
        let chart = BarChart {
            title: "Per-class accuracy",
            y_label: "top-1 accuracy",
            bars,
            sorted: true,
        };
        let image = chart.render(400, 100);
        assert_eq!(image.width(), 400);
        assert!(image.height() >= 40 * 12, "height {}", image.height());
        assert!(has_color(&image, BAR_COLOR));
        assert_eq!(image.as_raw(), chart.render(400, 100).as_raw());
        // Short lists keep the caller's height.
        let short = BarChart {
            bars: vec![("a".into(), 0.5), ("b".into(), f64::NAN), ("c".into(), 1.5)],
            ..chart.clone()
        };
        assert_eq!(short.render(400, 300).height(), 300);
        let empty = BarChart {
            bars: vec![],
            ..chart
        };
        for (w, h) in [(400, 100), (10, 10), (0, 0)] {
            assert_eq!(empty.render(w, h).width(), w);
            assert_eq!(short.render(w, h).width(), w);
        }
    }

    #[test]
    fn bar_chart_sorts_ascending() {
        let bar_pixels = |chart: &BarChart| {
            let image = chart.render(400, 10);
            image
                .enumerate_pixels()
                .filter(|(_, _, p)| **p == BAR_COLOR)
                .map(|(x, y, _)| (x, y))
                .collect::<Vec<_>>()
        };
        let presorted = BarChart {
            title: "",
            y_label: "",
            bars: vec![
                ("low".into(), 0.1),
                ("mid".into(), 0.5),
                ("high".into(), 0.9),
            ],
            sorted: false,
        };
        // A missing value (a negative-signed NaN, as 0.0 / 0.0 gives on x86) sorts last and
        // draws no bar, so the bars land exactly where the presorted chart has them.
        let shuffled = BarChart {
            bars: vec![
                ("none".into(), -f64::NAN),
                ("high".into(), 0.9),
                ("low".into(), 0.1),
                ("mid".into(), 0.5),
            ],
            sorted: true,
            ..presorted.clone()
        };
        let expected = bar_pixels(&presorted);
        assert!(!expected.is_empty());
        assert_eq!(bar_pixels(&shuffled), expected);
        let unsorted = BarChart {
            sorted: false,
            ..shuffled
        };
        assert_ne!(bar_pixels(&unsorted), expected);
    }

    #[test]
    fn downsample_averages_buckets() {
        let points: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), f64::from(i) * 2.0))
            .collect();
        assert_eq!(downsample(&points, 10), points);
        assert_eq!(
            downsample(&points, 5),
            vec![(0.5, 1.0), (2.5, 5.0), (4.5, 9.0), (6.5, 13.0), (8.5, 17.0)]
        );
        let big: Vec<(f64, f64)> = (0..900_001).map(|i| (f64::from(i), 1.0)).collect();
        assert!(downsample(&big, MAX_STEP_POINTS).len() <= MAX_STEP_POINTS);
    }

    const METRICS: &str = "epoch,step,learning_rate,train_loss,train_top1_error,val_loss,val_top1_error,val_top5_error,epoch_seconds,train_images_per_sec\n\
        1,10,0.01,2.3,0.9,2.2,0.88,0.5,1.0,10.0\n\
        2,20,0.01,2.0,0.8,2.1,0.8,0.4,1.0,10.0\n\
        3,30,0.001,1.5,0.6,NaN,0.7,0.3,1.0,10.0\n";

    #[test]
    fn plot_training_writes_three_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        fs::write(run.metrics(), METRICS).unwrap();
        // An extra column does no harm; steps.csv of older versions has no step times.
        let mut log = String::from("step,epoch,loss,learning_rate,extra\n");
        for step in 1..=30 {
            log.push_str(&format!(
                "{step},{},{},0.01,x\n",
                (step - 1) / 10 + 1,
                2.5 - f64::from(step) * 0.03
            ));
        }
        fs::write(run.steps(), log).unwrap();
        let out = dir.path().join("plots");
        let written = plot_training(&run, &out).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["loss.png", "error.png", "learning_rate.png"]);
        for path in &written {
            let image = image::open(path).unwrap();
            assert_eq!((image.width(), image.height()), TRAINING_CHART_SIZE);
        }
        // Without steps.csv the per-step series is simply left out.
        fs::remove_file(run.steps()).unwrap();
        let written = plot_training(&run, &out).unwrap();
        assert_eq!(written.len(), 3);
    }

    #[test]
    fn malformed_logs_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let out = dir.path().join("plots");
        fs::write(
            run.metrics(),
            METRICS.replace("2,20,0.01,2.0", "2,20,zero,2.0"),
        )
        .unwrap();
        let message = plot_training(&run, &out).unwrap_err().to_string();
        assert!(
            message.contains("metrics.csv") && message.contains("line 3"),
            "{message}"
        );

        fs::write(run.metrics(), METRICS).unwrap();
        fs::write(run.steps(), "step,epoch,learning_rate\n1,1,0.01\n").unwrap();
        let message = plot_training(&run, &out).unwrap_err().to_string();
        assert!(
            message.contains("steps.csv") && message.contains("loss"),
            "{message}"
        );

        fs::remove_file(run.metrics()).unwrap();
        let message = plot_training(&run, &out).unwrap_err().to_string();
        assert!(message.contains("metrics.csv"), "{message}");
    }
}
