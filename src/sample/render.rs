//! Rendering: what each class looks like (a shape or a texture, see [`class_spec`]) and drawing
//! it at a random position, scale and rotation over a random gradient, with distractors.

use std::f32::consts::{PI, TAU};

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

/// Base visual patterns. Shapes are single objects; textures fill a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pattern {
    Disc,
    Ring,
    Square,
    Triangle,
    Plus,
    Star,
    Target,
    Frame,
    HorizontalStripes,
    VerticalStripes,
    DiagonalStripes,
    Checkerboard,
    PolkaDots,
    Waves,
    Grid,
    DiagonalGrid,
}

/// Class order: shapes and textures interleaved so that even a handful of
/// classes mixes both, and the default ten are the most distinct ones.
pub(super) const PATTERNS: [Pattern; 16] = [
    Pattern::Disc,
    Pattern::HorizontalStripes,
    Pattern::Square,
    Pattern::Checkerboard,
    Pattern::Triangle,
    Pattern::PolkaDots,
    Pattern::Plus,
    Pattern::DiagonalStripes,
    Pattern::Ring,
    Pattern::Grid,
    Pattern::Star,
    Pattern::Waves,
    Pattern::Target,
    Pattern::VerticalStripes,
    Pattern::Frame,
    Pattern::DiagonalGrid,
];

/// Classes beyond the first `PATTERNS.len()` reuse a pattern with a different
/// parameter: shapes come as pairs or trios, textures as fine or coarse.
pub(super) const VARIANTS: usize = 3;

impl Pattern {
    fn is_texture(self) -> bool {
        matches!(
            self,
            Pattern::HorizontalStripes
                | Pattern::VerticalStripes
                | Pattern::DiagonalStripes
                | Pattern::Checkerboard
                | Pattern::PolkaDots
                | Pattern::Waves
                | Pattern::Grid
                | Pattern::DiagonalGrid
        )
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Pattern::Disc => "filled disc",
            Pattern::Ring => "ring, annulus",
            Pattern::Square => "filled square",
            Pattern::Triangle => "filled triangle",
            Pattern::Plus => "plus sign, cross",
            Pattern::Star => "five-pointed star",
            Pattern::Target => "target, concentric rings",
            Pattern::Frame => "square frame",
            Pattern::HorizontalStripes => "striped, horizontal bands",
            Pattern::VerticalStripes => "striped, vertical bands",
            Pattern::DiagonalStripes => "striped, diagonal bands",
            Pattern::Checkerboard => "checkerboard",
            Pattern::PolkaDots => "polka dots",
            Pattern::Waves => "wavy lines",
            Pattern::Grid => "grid lines",
            Pattern::DiagonalGrid => "diagonal lattice",
        }
    }

    /// Smallest feature (stripe, gap, line) as a fraction of the texture period.
    fn feature_fraction(self) -> f32 {
        match self {
            Pattern::PolkaDots => 0.4,
            Pattern::Grid | Pattern::DiagonalGrid => 0.3,
            _ => 0.5,
        }
    }

    /// Texture orientation in radians; only meaningful for textures. The
    /// jitter keeps orientation-defined classes apart (stripes vs. lattice).
    fn texture_angle(self, rng: &mut ChaCha8Rng) -> f32 {
        let jitter = rng.random_range(-10f32..=10.0).to_radians();
        let quarter = PI / 4.0;
        match self {
            Pattern::VerticalStripes => 2.0 * quarter + jitter,
            Pattern::DiagonalStripes => {
                let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                sign * quarter + jitter
            }
            Pattern::DiagonalGrid => quarter + jitter,
            Pattern::PolkaDots => rng.random_range(0.0..TAU),
            _ => jitter,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ClassSpec {
    pub(super) pattern: Pattern,
    variant: usize,
}

pub(super) fn class_spec(class: usize) -> ClassSpec {
    ClassSpec {
        pattern: PATTERNS[class % PATTERNS.len()],
        variant: class / PATTERNS.len(),
    }
}

impl ClassSpec {
    pub(super) fn name(self) -> String {
        let suffix = match (self.pattern.is_texture(), self.variant) {
            (_, 0) => "",
            (false, 1) => ", pair",
            (false, _) => ", trio",
            (true, 1) => ", fine",
            (true, _) => ", coarse",
        };
        format!("{}{suffix}", self.pattern.name())
    }

    /// Range of the smallest texture feature, as a fraction of the short side.
    /// The fine band stays above 1/40 so it survives a resize to ~128 px.
    fn feature_band(self) -> (f32, f32) {
        match self.variant {
            0 => (0.045, 0.065),
            1 => (0.028, 0.036),
            _ => (0.085, 0.11),
        }
    }

    /// Range of an object's diameter as a fraction of the short side, at
    /// most [`MAX_DIAMETER_FRACTION`].
    fn diameter_band(self) -> (f32, f32) {
        match (self.pattern.is_texture(), self.variant) {
            (true, 2) => (0.5, MAX_DIAMETER_FRACTION),
            (true, _) => (0.4, 0.7),
            (false, 0) => (0.25, 0.7),
            (false, 1) => (0.25, 0.42),
            (false, _) => (0.22, 0.33),
        }
    }

    pub(super) fn copies(self) -> usize {
        if self.pattern.is_texture() {
            1
        } else {
            self.variant + 1
        }
    }
}

// ---------------------------------------------------------------------------
// Rendering.

pub(super) type Rgb = [u8; 3];

pub(super) struct Canvas {
    pub(super) width: u32,
    pub(super) height: u32,
    /// Row-major RGB8.
    pub(super) pixels: Vec<u8>,
}

/// Inclusive pixel bounds of a drawn object, ImageNet-style `x_min y_min x_max y_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BBox {
    pub(super) x0: u32,
    pub(super) y0: u32,
    pub(super) x1: u32,
    pub(super) y1: u32,
}

impl BBox {
    fn include(&mut self, x: u32, y: u32) {
        self.x0 = self.x0.min(x);
        self.y0 = self.y0.min(y);
        self.x1 = self.x1.max(x);
        self.y1 = self.y1.max(y);
    }
}

pub(super) struct Rendered {
    pub(super) canvas: Canvas,
    /// One box per class object.
    pub(super) boxes: Vec<BBox>,
}

/// Largest object diameter as a fraction of the short side. With the margin of
/// [`object_region`] a 7/8 crop at any offset still shows most of the object.
pub(super) const MAX_DIAMETER_FRACTION: f32 = 0.7;

/// Objects keep `1/OBJECT_MARGIN_DIVISOR` of the central square's side clear
/// on every side: training crops 7/8 of the square at a random offset and
/// evaluation its centre 7/8, so objects stay in the central 7/8.
const OBJECT_MARGIN_DIVISOR: u32 = 16;

/// How far beyond an object's radius [`paint`] may touch pixels: its window
/// reaches one pixel further, plus a pixel against rounding of the centre.
const PAINT_SLACK: f32 = 2.0;

/// Inclusive pixel bounds that every class object lies inside: the central
/// square of the image (side = shorter side, centred like a centre crop) less a
/// margin of 1/16 of its side all round.
///
/// Preprocessing resizes the shorter side to S and centre-crops S×S, cutting
/// off the ends of elongated images; training then takes random 7/8 crops of
/// that square. An object placed anywhere in the image would often end up
/// outside the crop, leaving a plain-background sample.
pub(super) fn object_region(width: u32, height: u32) -> BBox {
    let short = width.min(height);
    let margin = short.div_ceil(OBJECT_MARGIN_DIVISOR);
    let (left, top) = ((width - short) / 2, (height - short) / 2);
    BBox {
        x0: left + margin,
        y0: top + margin,
        x1: left + short - 1 - margin,
        y1: top + short - 1 - margin,
    }
}

/// Luma difference between an object and what it is drawn on. Luma rather
/// than RGB distance keeps the class visible in the grayscale edge case.
const MIN_LUMA_CONTRAST: f32 = 60.0;

pub(super) fn render_class_image(
    rng: &mut ChaCha8Rng,
    class: usize,
    width: u32,
    height: u32,
) -> Rendered {
    let spec = class_spec(class);
    let short = width.min(height) as f32;

    // All colours are drawn independently of the class.
    let background = random_colour(rng);
    let background_end = shifted_colour(rng, background, 48);
    let foreground = contrasting_colour(rng, &[background, background_end]);
    let secondary = contrasting_colour(rng, &[foreground]);

    let angle = rng.random_range(0.0..TAU);
    let mut canvas = gradient_canvas(width, height, background, background_end, angle);
    draw_distractors(&mut canvas, rng, short);

    let region = object_region(width, height);
    // Only tiny images need the cap; it keeps the object inside the region.
    let max_radius = (region.x1 + 1 - region.x0) as f32 / 2.0 - PAINT_SLACK;
    let (lo, hi) = spec.diameter_band();
    let radii: Vec<f32> = (0..spec.copies())
        .map(|_| (0.5 * short * rng.random_range(lo..=hi)).min(max_radius))
        .collect();
    let centres = place_without_overlap(rng, region, &radii);
    let mut boxes = Vec::new();
    for (&radius, &(cx, cy)) in radii.iter().zip(&centres) {
        let drawn = if spec.pattern.is_texture() {
            draw_texture_patch(
                &mut canvas,
                rng,
                spec,
                (cx, cy, radius),
                [foreground, secondary],
            )
        } else {
            draw_shape(&mut canvas, rng, spec.pattern, (cx, cy, radius), foreground)
        };
        // The centre is inside the image, so something is always drawn;
        // fall back to the whole image rather than lose the label.
        boxes.push(drawn.unwrap_or(BBox {
            x0: 0,
            y0: 0,
            x1: width - 1,
            y1: height - 1,
        }));
    }

    add_noise(&mut canvas, rng);
    Rendered { canvas, boxes }
}

fn random_colour(rng: &mut ChaCha8Rng) -> Rgb {
    [rng.random(), rng.random(), rng.random()]
}

fn shifted_colour(rng: &mut ChaCha8Rng, colour: Rgb, max_shift: i32) -> Rgb {
    colour.map(|c| (i32::from(c) + rng.random_range(-max_shift..=max_shift)).clamp(0, 255) as u8)
}

pub(super) fn luma(c: Rgb) -> f32 {
    0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
}

fn contrasting_colour(rng: &mut ChaCha8Rng, against: &[Rgb]) -> Rgb {
    let contrasts = |c: Rgb| {
        against
            .iter()
            .all(|&a| (luma(c) - luma(a)).abs() >= MIN_LUMA_CONTRAST)
    };
    for _ in 0..64 {
        let candidate = random_colour(rng);
        if contrasts(candidate) {
            return candidate;
        }
    }
    // Practically unreachable; black or white always contrasts enough with
    // colours this close to each other.
    let mean = against.iter().map(|&c| luma(c)).sum::<f32>() / against.len().max(1) as f32;
    if mean > 127.5 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// Linear gradient along `angle`, from `from` at one edge to `to` at the other.
fn gradient_canvas(width: u32, height: u32, from: Rgb, to: Rgb, angle: f32) -> Canvas {
    let (sin, cos) = angle.sin_cos();
    let (w, h) = (width as f32, height as f32);
    let extent = (w * cos.abs() + h * sin.abs()).max(1.0);
    let from = from.map(f32::from);
    let delta = [0, 1, 2].map(|i| f32::from(to[i]) - from[i]);

    let stride = width as usize * 3;
    let mut pixels = vec![0u8; stride * height as usize];
    for (y, row) in pixels.chunks_exact_mut(stride).enumerate() {
        let row_offset = (y as f32 + 0.5 - h / 2.0) * sin;
        for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
            let t = 0.5 + ((x as f32 + 0.5 - w / 2.0) * cos + row_offset) / extent;
            for (i, channel) in pixel.iter_mut().enumerate() {
                // `as u8` saturates; adding 0.5 rounds without a libm call.
                *channel = (from[i] + delta[i] * t + 0.5) as u8;
            }
        }
    }
    Canvas {
        width,
        height,
        pixels,
    }
}

/// Small ellipses of random colour anywhere; they belong to no class and
/// teach the model to ignore clutter.
fn draw_distractors(canvas: &mut Canvas, rng: &mut ChaCha8Rng, short: f32) {
    let count = rng.random_range(0..=3);
    for _ in 0..count {
        let colour = random_colour(rng);
        let rx = short * rng.random_range(0.025..0.07);
        let ry = short * rng.random_range(0.025..0.07);
        let cx = rng.random_range(0.0..canvas.width as f32);
        let cy = rng.random_range(0.0..canvas.height as f32);
        let (sin, cos) = rng.random_range(0.0..PI).sin_cos();
        paint(canvas, (cx, cy, rx.max(ry)), [colour, colour], |dx, dy| {
            let u = (dx * cos + dy * sin) / rx;
            let v = (-dx * sin + dy * cos) / ry;
            (u * u + v * v <= 1.0).then_some(0)
        });
    }
}

/// Centres for circles of the given radii such that everything [`paint`]
/// touches for them lies inside `region` (see [`object_region`]) and, when
/// there is room, the circles do not overlap each other.
fn place_without_overlap(rng: &mut ChaCha8Rng, region: BBox, radii: &[f32]) -> Vec<(f32, f32)> {
    let mut centres: Vec<(f32, f32)> = Vec::with_capacity(radii.len());
    for (i, &r) in radii.iter().enumerate() {
        let mut candidate = (0.0, 0.0);
        for _ in 0..50 {
            candidate = (
                random_coordinate(rng, r, region.x0, region.x1),
                random_coordinate(rng, r, region.y0, region.y1),
            );
            let clear = centres.iter().zip(&radii[..i]).all(|(&(x, y), &other)| {
                let gap = r + other + 2.0;
                (x - candidate.0).powi(2) + (y - candidate.1).powi(2) >= gap * gap
            });
            if clear {
                break;
            }
        }
        centres.push(candidate);
    }
    centres
}

/// A centre coordinate, uniform over the positions where the pixels painted
/// around it (`radius + PAINT_SLACK` either side) stay within pixels
/// `first..=last`; their midpoint if there is no room to move.
fn random_coordinate(rng: &mut ChaCha8Rng, radius: f32, first: u32, last: u32) -> f32 {
    let reach = radius + PAINT_SLACK;
    let (lo, hi) = (first as f32 + reach, (last + 1) as f32 - reach);
    if hi <= lo {
        (first + last + 1) as f32 / 2.0
    } else {
        rng.random_range(lo..=hi)
    }
}

fn draw_shape(
    canvas: &mut Canvas,
    rng: &mut ChaCha8Rng,
    pattern: Pattern,
    (cx, cy, radius): (f32, f32, f32),
    colour: Rgb,
) -> Option<BBox> {
    let (sin, cos) = rng.random_range(0.0..TAU).sin_cos();
    paint(canvas, (cx, cy, radius), [colour, colour], |dx, dy| {
        let u = (dx * cos + dy * sin) / radius;
        let v = (-dx * sin + dy * cos) / radius;
        shape_contains(pattern, u, v).then_some(0)
    })
}

/// Whether unit-radius local coordinates `(u, v)` fall inside the shape.
fn shape_contains(pattern: Pattern, u: f32, v: f32) -> bool {
    let rho2 = u * u + v * v;
    match pattern {
        Pattern::Disc => rho2 <= 1.0,
        Pattern::Ring => (0.55 * 0.55..=1.0).contains(&rho2),
        Pattern::Square => u.abs() <= 0.7 && v.abs() <= 0.7,
        Pattern::Triangle => triangle_contains(u, v),
        Pattern::Plus => {
            let (a, b) = (u.abs(), v.abs());
            (a <= 0.27 && b <= 0.95) || (b <= 0.27 && a <= 0.95)
        }
        Pattern::Star => star_contains(u, v),
        // Five bands of 0.2: filled, gap, filled, gap, filled (outermost).
        Pattern::Target => rho2 <= 1.0 && ((rho2.sqrt() * 5.0) as u32).is_multiple_of(2),
        Pattern::Frame => (0.42..=0.72).contains(&u.abs().max(v.abs())),
        _ => false,
    }
}

/// Equilateral triangle with circumradius 1 (inradius 0.5) centred on the origin.
fn triangle_contains(u: f32, v: f32) -> bool {
    (0..3).all(|k| {
        let (sin, cos) = (PI / 2.0 + k as f32 * TAU / 3.0).sin_cos();
        u * cos + v * sin <= 0.5
    })
}

/// Five-pointed star with tips at radius 1 and notches at radius 0.4.
fn star_contains(u: f32, v: f32) -> bool {
    let rho = (u * u + v * v).sqrt();
    if rho > 1.0 {
        return false;
    }
    let sector = v.atan2(u) / (TAU / 5.0);
    // 1 at a tip, 0 halfway between tips.
    let towards_tip = (frac(sector) - 0.5).abs() * 2.0;
    rho <= 0.4 + 0.6 * towards_tip
}

/// A patch (disc or square, randomly) filled with the class texture. The patch
/// outline is random so that only the texture identifies the class.
fn draw_texture_patch(
    canvas: &mut Canvas,
    rng: &mut ChaCha8Rng,
    spec: ClassSpec,
    (cx, cy, radius): (f32, f32, f32),
    colours: [Rgb; 2],
) -> Option<BBox> {
    let short = canvas.width.min(canvas.height) as f32;
    let (lo, hi) = spec.feature_band();
    let feature = short * rng.random_range(lo..=hi);
    let period = (feature / spec.pattern.feature_fraction()).max(2.0);
    let (tex_sin, tex_cos) = spec.pattern.texture_angle(rng).sin_cos();
    let phase = (rng.random::<f32>(), rng.random::<f32>());
    let round_patch = rng.random_bool(0.5);
    let (patch_sin, patch_cos) = rng.random_range(0.0..TAU).sin_cos();
    let pattern = spec.pattern;

    paint(canvas, (cx, cy, radius), colours, |dx, dy| {
        let u = (dx * patch_cos + dy * patch_sin) / radius;
        let v = (-dx * patch_sin + dy * patch_cos) / radius;
        let inside = if round_patch {
            u * u + v * v <= 1.0
        } else {
            u.abs() <= 0.8 && v.abs() <= 0.8
        };
        if !inside {
            return None;
        }
        let tu = (dx * tex_cos + dy * tex_sin) / period + phase.0;
        let tv = (-dx * tex_sin + dy * tex_cos) / period + phase.1;
        Some(texture_colour(pattern, tu, tv))
    })
}

/// Colour index (0 or 1) of a texture at texture coordinates measured in periods.
fn texture_colour(pattern: Pattern, tu: f32, tv: f32) -> usize {
    let first = match pattern {
        Pattern::HorizontalStripes | Pattern::VerticalStripes | Pattern::DiagonalStripes => {
            frac(tv) < 0.5
        }
        Pattern::Checkerboard => (fast_floor(2.0 * tu) + fast_floor(2.0 * tv)) as i64 % 2 == 0,
        Pattern::PolkaDots => {
            let (a, b) = (frac(tu) - 0.5, frac(tv) - 0.5);
            a * a + b * b <= 0.3 * 0.3
        }
        Pattern::Waves => frac(tv + 0.4 * (TAU * tu / 3.0).sin()) < 0.5,
        Pattern::Grid | Pattern::DiagonalGrid => frac(tu) < 0.3 || frac(tv) < 0.3,
        _ => true,
    };
    if first {
        0
    } else {
        1
    }
}

/// `f32::floor` without a libm call: on baseline x86-64 the standard one is not
/// inlined, and texture sampling runs it several times per sub-sample. Exact for
/// |t| < 2^31, far beyond any coordinate used here.
fn fast_floor(t: f32) -> f32 {
    let truncated = t as i32 as f32;
    if truncated > t {
        truncated - 1.0
    } else {
        truncated
    }
}

/// Fractional part in [0, 1), also for negative `t`.
fn frac(t: f32) -> f32 {
    t - fast_floor(t)
}

/// Blends `sample` into the canvas around `(cx, cy)` within `reach` pixels.
///
/// `sample` gets offsets from the centre and returns a colour index or `None`
/// for "leave the canvas alone". Four samples per pixel anti-alias the edges,
/// which matters once the image is shrunk for training. Returns the bounds of
/// the pixels touched.
pub(super) fn paint(
    canvas: &mut Canvas,
    (cx, cy, reach): (f32, f32, f32),
    colours: [Rgb; 2],
    sample: impl Fn(f32, f32) -> Option<usize>,
) -> Option<BBox> {
    const OFFSETS: [(f32, f32); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
    let clamp_to = |v: f32, extent: u32| (v.max(0.0) as u32).min(extent);
    let (x_start, x_end) = (
        clamp_to((cx - reach - 1.0).floor(), canvas.width),
        clamp_to((cx + reach + 1.0).ceil(), canvas.width),
    );
    let (y_start, y_end) = (
        clamp_to((cy - reach - 1.0).floor(), canvas.height),
        clamp_to((cy + reach + 1.0).ceil(), canvas.height),
    );

    let mut bounds: Option<BBox> = None;
    let stride = canvas.width as usize * 3;
    for y in y_start..y_end {
        let row = &mut canvas.pixels[y as usize * stride..(y as usize + 1) * stride];
        for x in x_start..x_end {
            let mut hits = [0u32; 2];
            for (ox, oy) in OFFSETS {
                if let Some(index) = sample(x as f32 + ox - cx, y as f32 + oy - cy) {
                    hits[index] += 1;
                }
            }
            let covered = hits[0] + hits[1];
            if covered == 0 {
                continue;
            }
            let pixel = &mut row[x as usize * 3..x as usize * 3 + 3];
            for (i, channel) in pixel.iter_mut().enumerate() {
                let mixed = hits[0] * u32::from(colours[0][i])
                    + hits[1] * u32::from(colours[1][i])
                    + (4 - covered) * u32::from(*channel);
                *channel = ((mixed + 2) / 4) as u8;
            }
            match bounds.as_mut() {
                Some(b) => b.include(x, y),
                None => {
                    bounds = Some(BBox {
                        x0: x,
                        y0: y,
                        x1: x,
                        y1: y,
                    })
                }
            }
        }
    }
    bounds
}

/// Uniform per-channel noise in [-8, 8], like sensor noise, so that flat
/// regions are never perfectly flat.
fn add_noise(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let stride = canvas.width as usize * 3;
    let mut noise = vec![0u8; stride];
    for row in canvas.pixels.chunks_exact_mut(stride) {
        rng.fill_bytes(&mut noise);
        for (channel, &n) in row.iter_mut().zip(&noise) {
            let delta = ((i32::from(n) * 17) >> 8) - 8;
            *channel = (i32::from(*channel) + delta).clamp(0, 255) as u8;
        }
    }
}
