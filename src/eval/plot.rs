//! Charts for the evaluation stage, drawn with plotters into PNGs.
//!
//! [`plot_training`] turns a run directory's `metrics.csv` and `steps.csv` into `loss.png`,
//! `error.png` and `learning_rate.png`; [`per_class_chart`] draws one horizontal bar per class.
//! Rendering is plain CPU rasterisation with an embedded font, so the same data always gives
//! the same bytes.

use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use plotters::coord::ranged1d::{AsRangedCoord, SegmentValue, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::canvas::{self, Area, DrawError};
use crate::run::{EpochRow, LogError, RunDir, StepRow};

/// Distinct, colour-blind-friendly series colours (the "tab10" palette's first entries).
const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),  // blue
    RGBColor(255, 127, 14),  // orange
    RGBColor(44, 160, 44),   // green
    RGBColor(214, 39, 40),   // red
    RGBColor(148, 103, 189), // purple
];

/// Size of the charts [`plot_training`] writes.
pub const TRAINING_CHART_SIZE: (u32, u32) = (960, 540);

/// At most this many points of `steps.csv` are drawn; longer logs are averaged in buckets.
pub const MAX_STEP_POINTS: usize = 2000;

/// Width of `per_class.png`; its height follows the number of bars.
const BAR_CHART_WIDTH: u32 = 900;
const BAR_ROW_HEIGHT: u32 = 20;
/// Short lists still get a chart of a sensible shape.
const BAR_CHART_MIN_HEIGHT: u32 = 240;

const TITLE_COLOR: RGBColor = RGBColor(20, 20, 20);
const LABEL_COLOR: RGBColor = RGBColor(50, 50, 50);
const TICK_COLOR: RGBColor = RGBColor(80, 80, 80);
const AXIS_COLOR: RGBColor = RGBColor(70, 70, 70);
const GRID_COLOR: RGBColor = RGBColor(220, 220, 220);
const MINOR_GRID_COLOR: RGBColor = RGBColor(240, 240, 240);
const BAR_COLOR: RGBColor = RGBColor(70, 130, 180);
/// Per-step loss is drawn light so that the per-epoch curves on top of it stand out.
const STEP_LOSS_COLOR: RGBColor = RGBColor(160, 200, 228);

const TITLE_SIZE: f64 = 24.0;
const TEXT_SIZE: f64 = 16.0;
const TICK_SIZE: f64 = 14.0;
/// Title and, below it, the legend; kept out of the plot so that it never hides data.
const HEADER_HEIGHT: u32 = 72;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot draw {path}")]
    Draw {
        path: PathBuf,
        #[source]
        source: DrawError,
    },
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
        source: crate::files::FileError,
    },
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One named line of a [`LineChart`].
#[derive(Debug, Clone)]
struct Series {
    name: &'static str,
    /// (x, y) in drawing order. Non-finite values (and, on a log axis, y <= 0) are not drawn
    /// and break the line.
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// A series' points cut into runs that can be drawn as unbroken lines.
type Runs = Vec<Vec<(f64, f64)>>;

/// Lines over a shared x axis, with the legend under the title.
#[derive(Debug, Clone)]
struct LineChart {
    title: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    /// Drawn in order, so later series are on top. Series with nothing drawable are left out
    /// of the plot and the legend.
    series: Vec<Series>,
    /// Logarithmic y axis with ticks at powers of ten (for learning rates).
    log_y: bool,
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
    let zip = |x: &[f64], y: &[f64], factor: f64| -> Vec<(f64, f64)> {
        x.iter().zip(y).map(|(&x, &y)| (x, y * factor)).collect()
    };

    let steps = match run.read_steps() {
        Ok(rows) => Some(rows),
        Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error.into()),
    };
    let per_step = |f: fn(&StepRow) -> f64| -> Option<Vec<(f64, f64)>> {
        let points: Vec<_> = steps
            .as_ref()?
            .iter()
            .map(|r| (r.step as f64, f(r)))
            .collect();
        Some(downsample(&points, MAX_STEP_POINTS))
    };
    let mut loss_series = Vec::new();
    if let Some(points) = per_step(|r| f64::from(r.loss)) {
        loss_series.push(Series {
            name: "train loss (per step)",
            points,
            color: STEP_LOSS_COLOR,
        });
    }
    loss_series.push(Series {
        name: "train loss (epoch mean)",
        points: zip(step, &column(|r| r.train_loss), 1.0),
        color: PALETTE[0],
    });
    loss_series.push(Series {
        name: "val loss",
        points: zip(step, &column(|r| r.val_loss), 1.0),
        color: PALETTE[1],
    });
    // Each step's rate where the log has it: a warm-up changes the rate within an epoch.
    let learning_rate = match per_step(|r| r.learning_rate) {
        Some(points) => Series {
            name: "learning rate (per step)",
            points,
            color: PALETTE[4],
        },
        None => Series {
            name: "learning rate (per epoch)",
            points: zip(step, &column(|r| r.learning_rate), 1.0),
            color: PALETTE[4],
        },
    };
    let error = |name, f: fn(&EpochRow) -> f64, color| Series {
        name,
        points: zip(epoch, &column(f), 100.0),
        color,
    };
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
                    error("train top-1", |r| r.train_top1_error, PALETTE[0]),
                    error("val top-1", |r| r.val_top1_error, PALETTE[1]),
                    error("val top-5", |r| r.val_top5_error, PALETTE[2]),
                ],
                log_y: false,
            },
        ),
        (
            "learning_rate.png",
            LineChart {
                title: "Learning rate",
                x_label: "step",
                y_label: "learning rate",
                series: vec![learning_rate],
                log_y: true,
            },
        ),
    ];

    fs::create_dir_all(out_dir).map_err(|source| PlotError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, chart) in charts {
        let path = out_dir.join(name);
        let image = chart.render().map_err(|source| PlotError::Draw {
            path: path.clone(),
            source,
        })?;
        save_png(&image, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// Horizontal bars of (label, accuracy in [0, 1]) in the given order, top to bottom, written
/// as a PNG at `path`. The image grows with the number of bars; a non-finite value gets no bar
/// and reads "n/a".
pub fn per_class_chart(bars: &[(String, f64)], title: &str, path: &Path) -> Result<(), PlotError> {
    let image = render_bars(bars, title).map_err(|source| PlotError::Draw {
        path: path.to_path_buf(),
        source,
    })?;
    save_png(&image, path)
}

/// Writes `image` as a PNG at `path` atomically (`path.tmp`, then a rename).
fn save_png(image: &RgbImage, path: &Path) -> Result<(), PlotError> {
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
    crate::files::write_atomic(path, &bytes).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

impl LineChart {
    fn render(&self) -> Result<RgbImage, DrawError> {
        let (width, height) = TRAINING_CHART_SIZE;
        let mut image = RgbImage::new(width, height);
        // Runs of drawable points: a NaN, an infinity or (on a log axis) a non-positive value
        // ends one line and starts the next.
        let series: Vec<(&Series, Runs)> = self
            .series
            .iter()
            .map(|s| {
                let runs = s
                    .points
                    .split(|&(x, y)| !drawable(x, y, self.log_y))
                    .filter(|run| !run.is_empty())
                    .map(<[_]>::to_vec)
                    .collect::<Vec<_>>();
                (s, runs)
            })
            .filter(|(_, runs)| !runs.is_empty())
            .collect();
        let points = || series.iter().flat_map(|(_, runs)| runs.iter().flatten());
        let x_range = linear_range(points().map(|p| p.0));
        canvas::draw_on(&mut image, |root| {
            root.fill(&WHITE)?;
            let (header, body) = root.split_vertically(HEADER_HEIGHT);
            draw_title(&header, self.title)?;
            let legend: Vec<_> = series.iter().map(|(s, _)| (s.name, s.color)).collect();
            draw_legend(&header, &legend)?;
            if self.log_y {
                let y_range = log_range(points().map(|p| p.1));
                self.draw_plot(&body, x_range, y_range.log_scale(), &series)
            } else {
                let y_range = linear_range(points().map(|p| p.1));
                self.draw_plot(&body, x_range, y_range, &series)
            }
        })?;
        Ok(image)
    }

    fn draw_plot<Y>(
        &self,
        body: &Area<'_>,
        x_range: Range<f64>,
        y_range: Y,
        series: &[(&Series, Runs)],
    ) -> Result<(), DrawError>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(body)
            .margin_left(12)
            .margin_right(32)
            .margin_bottom(12)
            .x_label_area_size(56)
            .y_label_area_size(84)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .axis_desc_style(canvas::font(TEXT_SIZE).color(&LABEL_COLOR))
            .label_style(canvas::font(TICK_SIZE).color(&TICK_COLOR))
            .axis_style(AXIS_COLOR)
            .bold_line_style(GRID_COLOR)
            .light_line_style(MINOR_GRID_COLOR)
            .x_labels(10)
            .y_labels(if self.log_y { 6 } else { 8 })
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| tick_label(*v))
            .draw()?;
        let plot_width = chart.plotting_area().dim_in_pixel().0;
        for (s, runs) in series {
            for run in runs {
                chart.draw_series(LineSeries::new(
                    run.iter().copied(),
                    s.color.stroke_width(2),
                ))?;
            }
            // Markers while points are sparse; they also make single points visible.
            let count: usize = runs.iter().map(Vec::len).sum();
            if count <= (plot_width as usize / 12).max(1) {
                chart.draw_series(
                    runs.iter()
                        .flatten()
                        .map(|&p| Circle::new(p, 3, s.color.filled())),
                )?;
            }
        }
        Ok(())
    }
}

fn render_bars(bars: &[(String, f64)], title: &str) -> Result<RgbImage, DrawError> {
    let rows = u32::try_from(bars.len()).unwrap_or(u32::MAX).max(1);
    let x_label_area = 56;
    let margin = 12;
    let header = 48;
    let height = rows
        .saturating_mul(BAR_ROW_HEIGHT)
        .saturating_add(header + x_label_area + 2 * margin)
        .max(BAR_CHART_MIN_HEIGHT);
    let mut image = RgbImage::new(BAR_CHART_WIDTH, height);
    canvas::draw_on(&mut image, |root| {
        root.fill(&WHITE)?;
        let (top, body) = root.split_vertically(header);
        draw_title(&top, title)?;

        let label_style = canvas::font(TICK_SIZE).color(&LABEL_COLOR);
        let names = bars
            .iter()
            .map(|(name, _)| canvas::fit(root, name, &label_style, BAR_CHART_WIDTH * 2 / 5))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names_width = 0;
        for name in &names {
            names_width = names_width.max(root.estimate_text_size(name, &label_style)?.0);
        }
        let value_width = root.estimate_text_size("100.0%", &label_style)?.0;
        let x_max = bars
            .iter()
            .map(|b| b.1 * 100.0)
            .filter(|v| v.is_finite())
            .fold(100.0, f64::max);
        let mut chart = ChartBuilder::on(&body)
            .margin(margin)
            .margin_right(margin + value_width + 8)
            .x_label_area_size(x_label_area)
            .y_label_area_size(names_width + 16)
            .build_cartesian_2d(0.0..x_max, (0..rows).into_segmented())?;
        // Row 0 is the bottom of the axis; the first bar goes on top.
        let row = |i: usize| rows - 1 - i as u32;
        let name_of = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(r) if *r < rows => names
                .get((rows - 1 - r) as usize)
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            // Class names sit beside their bars; ticks would only mark segment edges.
            .set_tick_mark_size(LabelAreaPosition::Left, 0)
            .x_desc("top-1 accuracy (%)")
            .axis_desc_style(canvas::font(TEXT_SIZE).color(&LABEL_COLOR))
            .x_label_style(canvas::font(TICK_SIZE).color(&TICK_COLOR))
            .y_label_style(label_style.clone())
            .axis_style(AXIS_COLOR)
            .bold_line_style(GRID_COLOR)
            .light_line_style(MINOR_GRID_COLOR)
            .x_labels(11)
            .y_labels(rows as usize + 1)
            .x_label_formatter(&|v| format!("{}%", tick_label(*v)))
            .y_label_formatter(&name_of)
            .draw()?;
        chart.draw_series(
            Histogram::horizontal(&chart)
                .style(BAR_COLOR.filled())
                .margin(3)
                .data(
                    bars.iter()
                        .enumerate()
                        .filter(|(_, (_, v))| v.is_finite())
                        .map(|(i, (_, v))| (row(i), v.max(0.0) * 100.0)),
                ),
        )?;
        let value_style = label_style.pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let (end, text) = if v.is_finite() {
                (v.max(0.0) * 100.0, format!("{:.1}%", v * 100.0))
            } else {
                (0.0, "n/a".to_string())
            };
            EmptyElement::at((end, SegmentValue::CenterOf(row(i))))
                + Text::new(text, (6, 0), value_style.clone())
        }))?;
        if bars.is_empty() {
            let style = canvas::font(TEXT_SIZE)
                .color(&TICK_COLOR)
                .pos(Pos::new(HPos::Center, VPos::Center));
            let (w, h) = body.dim_in_pixel();
            body.draw(&Text::new("no data", (w as i32 / 2, h as i32 / 2), style))?;
        }
        Ok(())
    })?;
    Ok(image)
}

fn draw_title(area: &Area<'_>, title: &str) -> Result<(), DrawError> {
    let style = canvas::font(TITLE_SIZE)
        .color(&TITLE_COLOR)
        .pos(Pos::new(HPos::Center, VPos::Top));
    let width = area.dim_in_pixel().0 as i32;
    area.draw(&Text::new(title, (width / 2, 12), style))
}

/// One centred row of line swatches and names under the title.
fn draw_legend(area: &Area<'_>, entries: &[(&str, RGBColor)]) -> Result<(), DrawError> {
    const SWATCH: i32 = 28;
    const GAP: i32 = 8;
    const SPACING: i32 = 32;
    let style = canvas::font(TEXT_SIZE)
        .color(&LABEL_COLOR)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut widths = Vec::new();
    for (name, _) in entries {
        widths.push(area.estimate_text_size(name, &style)?.0 as i32);
    }
    let total: i32 = widths.iter().map(|w| SWATCH + GAP + w).sum::<i32>()
        + SPACING * (entries.len() as i32 - 1).max(0);
    let (width, height) = area.dim_in_pixel();
    let y = height as i32 - 16;
    let mut x = (width as i32 - total) / 2;
    for ((name, color), w) in entries.iter().zip(widths) {
        area.draw(&PathElement::new(
            vec![(x, y), (x + SWATCH, y)],
            color.stroke_width(3),
        ))?;
        area.draw(&Text::new(*name, (x + SWATCH + GAP, y), style.clone()))?;
        x += SWATCH + GAP + w + SPACING;
    }
    Ok(())
}

/// Whether (x, y) can be placed on the chart.
fn drawable(x: f64, y: f64, log_y: bool) -> bool {
    x.is_finite() && y.is_finite() && (!log_y || y > 0.0)
}

/// The values' range with a little room on either side; 0..1 when there are none.
fn linear_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let Some((lo, hi)) = finite_bounds(values) else {
        return 0.0..1.0;
    };
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        (lo.abs() * 0.1).max(0.5)
    };
    if (hi - lo + 2.0 * pad).is_finite() {
        lo - pad..hi + pad
    } else {
        lo..hi
    }
}

/// Whole decades around the (positive) values, and a little room beyond, so that every power
/// of ten in between gets a tick.
fn log_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let Some((lo, hi)) = finite_bounds(values.filter(|&v| v > 0.0)) else {
        return 0.1..10.0;
    };
    let lo_exp = lo.log10().floor();
    let mut hi_exp = hi.log10().ceil();
    if hi_exp <= lo_exp {
        hi_exp = lo_exp + 1.0;
    }
    let pad = (hi_exp - lo_exp) * 0.05;
    10f64.powf(lo_exp - pad)..10f64.powf(hi_exp + pad)
}

fn finite_bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |range, v| match range {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// Short tick labels: "0.3" rather than "0.30000000000000004", "200k" rather than "200000",
/// "1e-4" for small learning rates.
fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 {
        // Also for -0.0, which a range just below zero can produce.
        return "0".to_string();
    }
    if !(1e-3..1e9).contains(&magnitude) {
        return format!("{:e}", round_significant(value));
    }
    let (scaled, suffix) = if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    format!("{}{suffix}", round_significant(scaled))
}

/// `value` to 9 significant digits, which drops the binary noise in computed tick positions.
fn round_significant(value: f64) -> f64 {
    let scale = 10f64.powi(8 - value.abs().log10().floor() as i32);
    if scale.is_finite() && scale > 0.0 {
        (value * scale).round() / scale
    } else {
        value
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &'static str, points: Vec<(f64, f64)>, color: RGBColor) -> Series {
        Series {
            name,
            points,
            color,
        }
    }

    fn chart(series: Vec<Series>, log_y: bool) -> LineChart {
        LineChart {
            title: "Test",
            x_label: "x",
            y_label: "y",
            series,
            log_y,
        }
    }

    /// Pixels of exactly `color` (the plotters line colour; antialiasing is off for lines).
    fn pixels_of(image: &RgbImage, color: RGBColor) -> Vec<(u32, u32)> {
        image
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 == [color.0, color.1, color.2])
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    fn mean_y(pixels: &[(u32, u32)]) -> f64 {
        pixels.iter().map(|p| f64::from(p.1)).sum::<f64>() / pixels.len() as f64
    }

    #[test]
    fn a_rising_curve_is_drawn_rising_and_moves_with_its_data() {
        // Left half low, right half high: on the image (y grows downwards) the line's pixels on
        // the right must sit above those on the left.
        let rising: Vec<_> = (0..50).map(|i| (f64::from(i), f64::from(i))).collect();
        let image = chart(vec![series("a", rising.clone(), PALETTE[0])], false)
            .render()
            .unwrap();
        let drawn = pixels_of(&image, PALETTE[0]);
        // The legend swatch shares the colour; keep to the plot below the header.
        let drawn: Vec<_> = drawn.into_iter().filter(|p| p.1 > HEADER_HEIGHT).collect();
        assert!(drawn.len() > 200, "{} line pixels", drawn.len());
        let middle = f64::from(TRAINING_CHART_SIZE.0) / 2.0;
        let (left, right): (Vec<_>, Vec<_>) = drawn.iter().partition(|p| f64::from(p.0) < middle);
        assert!(
            mean_y(&right) + 100.0 < mean_y(&left),
            "right {} left {}",
            mean_y(&right),
            mean_y(&left)
        );

        // The same curve with a higher end point beside a fixed reference line: the curve's
        // last pixels climb relative to the reference, in proportion.
        let reference: Vec<_> = (0..50).map(|i| (f64::from(i), 0.0)).collect();
        let end_height = |top: f64| {
            let mut points = rising.clone();
            points.push((50.0, top));
            let image = chart(
                vec![
                    series("ref", reference.clone(), PALETTE[1]),
                    // Holds the y range still, so that only the tip moves.
                    series("ceiling", vec![(25.0, 200.0)], PALETTE[2]),
                    series("a", points, PALETTE[0]),
                ],
                false,
            )
            .render()
            .unwrap();
            let last_column = pixels_of(&image, PALETTE[0])
                .into_iter()
                .filter(|p| p.1 > HEADER_HEIGHT)
                .map(|p| p.0)
                .max()
                .unwrap();
            let tip: Vec<_> = pixels_of(&image, PALETTE[0])
                .into_iter()
                .filter(|p| p.0 + 3 >= last_column && p.1 > HEADER_HEIGHT)
                .collect();
            let floor = mean_y(
                &pixels_of(&image, PALETTE[1])
                    .into_iter()
                    .filter(|p| p.1 > HEADER_HEIGHT)
                    .collect::<Vec<_>>(),
            );
            floor - mean_y(&tip)
        };
        let (high, low) = (end_height(100.0), end_height(50.0));
        assert!((high / low - 2.0).abs() < 0.1, "{high} {low}");
    }

    #[test]
    fn rendering_is_deterministic_and_draws_every_series() {
        let a: Vec<_> = (0..20)
            .map(|i| (f64::from(i), f64::from(i).sin()))
            .collect();
        let b: Vec<_> = (0..20)
            .map(|i| (f64::from(i), f64::from(i).cos()))
            .collect();
        let make = || {
            chart(
                vec![
                    series("a", a.clone(), PALETTE[0]),
                    series("b", b.clone(), PALETTE[1]),
                ],
                false,
            )
            .render()
            .unwrap()
        };
        let first = make();
        assert_eq!(first.as_raw(), make().as_raw());
        for color in [PALETTE[0], PALETTE[1]] {
            assert!(pixels_of(&first, color).len() > 100);
        }
        // Title, legend and tick labels are drawn in text colours, not only lines.
        let dark = first
            .pixels()
            .filter(|p| p.0.iter().all(|&c| c < 100))
            .count();
        assert!(dark > 500, "{dark} dark pixels");
    }

    #[test]
    fn a_log_axis_spreads_decades_evenly() {
        // 1e-2, 1e-3, 1e-4 at x = 0, 1, 2: on a log axis equal steps down, so the middle point
        // is half-way between the ends (within a few pixels).
        let points = vec![(0.0, 1e-2), (1.0, 1e-3), (2.0, 1e-4)];
        let image = chart(vec![series("lr", points, PALETTE[4])], true)
            .render()
            .unwrap();
        let drawn: Vec<_> = pixels_of(&image, PALETTE[4])
            .into_iter()
            .filter(|p| p.1 > HEADER_HEIGHT)
            .collect();
        let xs: Vec<u32> = drawn.iter().map(|p| p.0).collect();
        let (x0, x2) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
        let y_at = |x: u32| {
            mean_y(
                &drawn
                    .iter()
                    .copied()
                    .filter(|p| p.0.abs_diff(x) <= 1)
                    .collect::<Vec<_>>(),
            )
        };
        let (top, middle, bottom) = (y_at(x0 + 3), y_at((x0 + x2) / 2), y_at(x2 - 3));
        assert!(top < middle && middle < bottom);
        assert!(
            ((top + bottom) / 2.0 - middle).abs() < 6.0,
            "{top} {middle} {bottom}"
        );
        assert_eq!(tick_label(1e-4), "1e-4");
    }

    #[test]
    fn awkward_inputs_do_not_panic() {
        let cases: Vec<Vec<(f64, f64)>> = vec![
            vec![],
            vec![(1.0, 1.0)],
            vec![(1.0, 2.0), (1.0, 2.0)],
            vec![
                (0.0, f64::NAN),
                (1.0, f64::INFINITY),
                (2.0, f64::NEG_INFINITY),
            ],
            vec![(0.0, 1e300), (1.0, -1e300)],
            vec![(0.0, -1.0), (1.0, 0.0)],
        ];
        for points in cases {
            for log_y in [false, true] {
                chart(vec![series("s", points.clone(), PALETTE[0])], log_y)
                    .render()
                    .unwrap();
            }
        }
        render_bars(&[], "empty").unwrap();
        render_bars(&[("nan".into(), f64::NAN), ("neg".into(), -1.0)], "odd").unwrap();
    }

    #[test]
    fn a_nan_breaks_the_line_instead_of_joining_across_it() {
        let mut points: Vec<_> = (0..10).map(|i| (f64::from(i), 1.0)).collect();
        points.extend((10..20).map(|i| (f64::from(i), 2.0)));
        let joined = chart(vec![series("s", points.clone(), PALETTE[0])], false)
            .render()
            .unwrap();
        points[10].1 = f64::NAN;
        let broken = chart(vec![series("s", points, PALETTE[0])], false)
            .render()
            .unwrap();
        // The step from 1 to 2 between x = 9 and 10 is gone: fewer line pixels.
        assert!(pixels_of(&broken, PALETTE[0]).len() < pixels_of(&joined, PALETTE[0]).len());
    }

    #[test]
    fn bars_grow_with_their_values_and_the_chart_with_its_rows() {
        let bars = vec![
            ("full".to_string(), 1.0),
            ("half".to_string(), 0.5),
            ("tenth".to_string(), 0.1),
        ];
        let image = render_bars(&bars, "per class").unwrap();
        // Bar length per row: the widest run of bar-coloured pixels in each band of rows.
        let widths: Vec<usize> = (0..image.height())
            .map(|y| {
                (0..image.width())
                    .filter(|&x| image.get_pixel(x, y).0 == [BAR_COLOR.0, BAR_COLOR.1, BAR_COLOR.2])
                    .count()
            })
            .filter(|&w| w > 0)
            .collect();
        let mut lengths = widths.clone();
        lengths.dedup();
        assert_eq!(lengths.len(), 3, "{lengths:?}");
        assert!(lengths[0] > lengths[1] && lengths[1] > lengths[2]);
        let ratio = lengths[1] as f64 / lengths[0] as f64;
        assert!((ratio - 0.5).abs() < 0.03, "{ratio}");

        let many: Vec<_> = (0..200).map(|i| (format!("class {i}"), 0.5)).collect();
        let tall = render_bars(&many, "many").unwrap();
        assert!(tall.height() >= 200 * BAR_ROW_HEIGHT);
        assert_eq!(tall.width(), BAR_CHART_WIDTH);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(200_000.0), "200k");
        assert_eq!(tick_label(3_000_000.0), "3M");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(12.5), "12.5");
    }

    #[test]
    fn downsample_averages_buckets() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), f64::from(2 * i))).collect();
        assert_eq!(downsample(&points, 20), points);
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
    fn plot_training_writes_three_pngs_that_follow_the_logs() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        fs::write(run.metrics(), METRICS).unwrap();
        let mut log = String::from("step,epoch,loss,learning_rate,ms_per_step\n");
        for step in 1..=30 {
            log.push_str(&format!(
                "{step},{},{},0.01,5.0\n",
                (step - 1) / 10 + 1,
                2.5 - f64::from(step) * 0.03
            ));
        }
        fs::write(run.steps(), &log).unwrap();
        let out = dir.path().join("plots");
        let written = plot_training(&run, &out).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["loss.png", "error.png", "learning_rate.png"]);
        let read = |name: &str| image::open(out.join(name)).unwrap().into_rgb8();
        for name in names {
            assert_eq!(read(name).dimensions(), TRAINING_CHART_SIZE);
            assert!(
                pixels_of(&read(name), PALETTE[0]).len() + pixels_of(&read(name), PALETTE[4]).len()
                    > 50
            );
        }
        let error_before = read("error.png");
        // Different data, different picture.
        fs::write(run.metrics(), METRICS.replace("0.6,NaN,0.7", "0.1,NaN,0.7")).unwrap();
        plot_training(&run, &out).unwrap();
        assert_ne!(read("error.png").as_raw(), error_before.as_raw());

        // Without steps.csv the per-step series is simply left out.
        fs::remove_file(run.steps()).unwrap();
        plot_training(&run, &out).unwrap();
        assert!(pixels_of(&read("loss.png"), STEP_LOSS_COLOR).is_empty());
        fs::write(run.steps(), &log).unwrap();
        plot_training(&run, &out).unwrap();
        assert!(pixels_of(&read("loss.png"), STEP_LOSS_COLOR).len() > 50);
    }

    #[test]
    fn the_learning_rate_chart_draws_every_steps_rate_so_a_warm_up_shows() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        fs::write(run.metrics(), METRICS).unwrap();
        let log = |warmup_steps: u32| {
            let mut log = String::from("step,epoch,loss,learning_rate,ms_per_step\n");
            for step in 1..=30 {
                let rate = 0.01 * f64::from(step.min(warmup_steps)) / f64::from(warmup_steps);
                log.push_str(&format!("{step},{},2.0,{rate},5.0\n", (step - 1) / 10 + 1));
            }
            log
        };
        let out = dir.path().join("plots");
        let chart = |steps_log: &str| {
            fs::write(run.steps(), steps_log).unwrap();
            plot_training(&run, &out).unwrap();
            image::open(out.join("learning_rate.png"))
                .unwrap()
                .into_rgb8()
        };
        let (flat, warm) = (chart(&log(1)), chart(&log(10)));
        assert!(pixels_of(&warm, PALETTE[4]).len() > 50);
        assert_ne!(flat.as_raw(), warm.as_raw());
        // A flat rate is a line a few pixels thick (with its markers); the ramp climbs through
        // most of the plot's height (the legend, above the plot, is left out).
        let rows = |image: &RgbImage| {
            let mut ys: Vec<u32> = pixels_of(image, PALETTE[4])
                .iter()
                .map(|p| p.1)
                .filter(|&y| y > HEADER_HEIGHT)
                .collect();
            ys.dedup();
            ys.len()
        };
        assert!(rows(&flat) <= 10, "{}", rows(&flat));
        assert!(rows(&warm) > 200, "{}", rows(&warm));
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
        let message = format!(
            "{:#}",
            anyhow::Error::from(plot_training(&run, &out).unwrap_err())
        );
        assert!(message.contains("metrics.csv"), "{message}");

        fs::write(run.metrics(), METRICS).unwrap();
        fs::write(run.steps(), "step,epoch,learning_rate\n1,1,0.01\n").unwrap();
        let message = format!(
            "{:#}",
            anyhow::Error::from(plot_training(&run, &out).unwrap_err())
        );
        assert!(message.contains("steps.csv"), "{message}");

        fs::remove_file(run.metrics()).unwrap();
        let message = format!(
            "{:#}",
            anyhow::Error::from(plot_training(&run, &out).unwrap_err())
        );
        assert!(message.contains("metrics.csv"), "{message}");
    }
}
