//! A tiny built-in bitmap font for labelling images (contact sheets, debug output).
//!
//! The project must not depend on font files or font crates just to write class names under
//! image crops, so this module carries its own 5×7 pixel font, drawn by hand for this crate.
//! Every glyph sits in a 6×8 cell: the extra column and row are the gap to the next character
//! and line. Text is drawn as solid squares of `scale`×`scale` image pixels per font pixel, with
//! clipping at the image edges so callers can place labels anywhere without bounds checks.

use image::{Rgb, RgbImage};

/// Glyph cell size in font pixels (before scaling), including 1 column of spacing.
pub const GLYPH_WIDTH: u32 = 6; // 5 columns of glyph + 1 of spacing
/// Glyph cell size in font pixels (before scaling), including 1 row of spacing.
pub const GLYPH_HEIGHT: u32 = 8; // 7 rows of glyph + 1 of spacing

/// Columns and rows of actual glyph pixels inside a cell.
const INK_WIDTH: u32 = 5;
const INK_HEIGHT: u32 = 7;

/// One glyph: 7 rows, top to bottom. Each row uses the low 5 bits of its byte, and bit 4
/// (`0b10000`) is the leftmost column, so the binary literals below read like the glyph itself.
type Glyph = [u8; INK_HEIGHT as usize];

/// Drawn for characters the font does not cover, so that missing glyphs are visible rather than
/// silently dropped. Deliberately unlike any real glyph (square corners, flat top one row down).
const FALLBACK: Glyph = [
    0b00000, 0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111,
];

/// Width and height in image pixels of `text` drawn at `scale` (one line, no wrapping).
///
/// Every character, including unknown ones, occupies one `GLYPH_WIDTH`×`GLYPH_HEIGHT` cell, so
/// the width includes the spacing column after the last character and the height includes the
/// spacing row under the glyphs. The height is one line even for empty text (so label rows keep
/// a constant height); the width of empty text is 0. Sizes saturate at `u32::MAX`.
#[must_use]
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let chars = u64::try_from(text.chars().count()).unwrap_or(u64::MAX);
    let width = chars
        .saturating_mul(u64::from(GLYPH_WIDTH))
        .saturating_mul(u64::from(scale));
    let width = u32::try_from(width).unwrap_or(u32::MAX);
    (width, GLYPH_HEIGHT.saturating_mul(scale))
}

/// Draws `text` with its top-left corner at (x, y), each font pixel a `scale`×`scale` square of
/// `color`. Pixels falling outside the image are clipped (never panics). Characters without a
/// glyph are drawn as a small hollow box. Returns the x just past the last character.
///
/// Only glyph pixels are painted; the background shows through (see [`draw_label`] for text on
/// a filled box). The returned x is `x + text_size(text, scale).0`, saturating at `i64::MAX`.
pub fn draw_text(
    image: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    color: Rgb<u8>,
    scale: u32,
) -> i64 {
    let advance = i64::from(GLYPH_WIDTH) * i64::from(scale);
    let image_width = i64::from(image.width());
    let mut cursor = x;
    for c in text.chars() {
        // Characters wholly off either side cost nothing to skip; we still advance the cursor so
        // the return value and the position of later characters stay right.
        let visible = cursor < image_width && cursor.saturating_add(advance) > 0;
        if visible {
            draw_glyph(image, cursor, y, glyph_or_fallback(c), color, scale);
        }
        cursor = cursor.saturating_add(advance);
    }
    cursor
}

/// Truncates `text` with a trailing '…'-like marker (use "..") so that it fits `max_width`
/// image pixels at `scale`; returns the text unchanged when it fits.
///
/// "Fits" means `text_size(result, scale).0 <= max_width`. Whitespace left dangling before the
/// marker is dropped ("tench, .." becomes "tench,.."). When not even one character plus the
/// marker fits, the result is the longest plain prefix of `text` that fits (possibly empty): a
/// couple of real letters say more than a bare "..".
#[must_use]
pub fn fit_text(text: &str, max_width: u32, scale: u32) -> String {
    const MARKER: &str = "..";
    if text_size(text, scale).0 <= max_width {
        return text.to_string();
    }
    let capacity = chars_that_fit(max_width, scale);
    let marker_len = MARKER.chars().count();
    if capacity <= marker_len {
        return text.chars().take(capacity).collect();
    }
    let kept: String = text.chars().take(capacity - marker_len).collect();
    format!("{}{}", kept.trim_end(), MARKER)
}

/// Draws `text` on a filled background box (`background` colour, 1 font-pixel padding on every
/// side) — for legible labels on arbitrary photos. Returns the box's (width, height).
///
/// The padding is measured from the glyph pixels, not from the cell: the trailing spacing column
/// and row of [`text_size`] are not doubled up with the padding, so the box is exactly one font
/// pixel wider and taller than `text_size` (for empty text: 2×9 font pixels). The box's top-left
/// corner is at (x, y) and the text starts one font pixel in. Clipped like [`draw_text`].
pub fn draw_label(
    image: &mut RgbImage,
    x: i64,
    y: i64,
    text: &str,
    color: Rgb<u8>,
    background: Rgb<u8>,
    scale: u32,
) -> (u32, u32) {
    let (cell_width, _) = text_size(text, scale);
    let ink_width = cell_width.saturating_sub(scale); // drop the spacing after the last glyph
    let ink_height = INK_HEIGHT.saturating_mul(scale);
    let padding = scale;
    let box_width = ink_width.saturating_add(padding.saturating_mul(2));
    let box_height = ink_height.saturating_add(padding.saturating_mul(2));
    fill_rect(image, x, y, box_width, box_height, background);
    let pad = i64::from(padding);
    draw_text(
        image,
        x.saturating_add(pad),
        y.saturating_add(pad),
        text,
        color,
        scale,
    );
    (box_width, box_height)
}

/// How many whole character cells fit in `max_width` image pixels at `scale`.
fn chars_that_fit(max_width: u32, scale: u32) -> usize {
    let cell = u64::from(GLYPH_WIDTH) * u64::from(scale);
    if cell == 0 {
        // Scale 0 draws nothing, so any amount of text fits.
        return usize::MAX;
    }
    usize::try_from(u64::from(max_width) / cell).unwrap_or(usize::MAX)
}

/// Paints the set pixels of one glyph whose cell's top-left corner is at (x, y).
fn draw_glyph(image: &mut RgbImage, x: i64, y: i64, glyph: Glyph, color: Rgb<u8>, scale: u32) {
    let step = i64::from(scale);
    for (row, bits) in (0i64..).zip(glyph.iter()) {
        for col in 0..i64::from(INK_WIDTH) {
            let mask = 1u8 << (i64::from(INK_WIDTH) - 1 - col);
            if bits & mask != 0 {
                let px = x.saturating_add(col * step);
                let py = y.saturating_add(row * step);
                fill_rect(image, px, py, scale, scale, color);
            }
        }
    }
}

/// Fills the rectangle [x, x + width) × [y, y + height) with `color`, clipped to the image.
fn fill_rect(image: &mut RgbImage, x: i64, y: i64, width: u32, height: u32, color: Rgb<u8>) {
    let Some((x0, x1)) = clip_span(x, width, image.width()) else {
        return;
    };
    let Some((y0, y1)) = clip_span(y, height, image.height()) else {
        return;
    };
    for py in y0..y1 {
        for px in x0..x1 {
            image.put_pixel(px, py, color);
        }
    }
}

/// Intersects the span [start, start + length) with [0, limit); `None` when they do not overlap.
fn clip_span(start: i64, length: u32, limit: u32) -> Option<(u32, u32)> {
    let end = start
        .saturating_add(i64::from(length))
        .min(i64::from(limit));
    let start = start.max(0);
    if start >= end {
        return None;
    }
    // Both ends now lie in [0, limit], so they fit in u32.
    let start = u32::try_from(start).ok()?;
    let end = u32::try_from(end).ok()?;
    Some((start, end))
}

/// The glyph for `c`, or the hollow fallback box when the font does not cover it.
fn glyph_or_fallback(c: char) -> Glyph {
    glyph(c).unwrap_or(FALLBACK)
}

/// The font itself. Lowercase letters use rows 2–6 as their x-height with ascenders reaching row
/// 0; there is no room below the baseline, so g, j, p, q and y fold their tails into the bottom
/// rows (as on classic 5×7 character LCDs).
#[rustfmt::skip]
fn glyph(c: char) -> Option<Glyph> {
    let rows = match c {
        ' ' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000],

        // Digits. Zero carries a slash so it never reads as the letter O.
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],

        // Uppercase: full 7-row height.
        'A' => [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'B' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110],
        'C' => [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110],
        'D' => [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100],
        'E' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111],
        'F' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000],
        'G' => [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111],
        'H' => [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'I' => [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'J' => [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100],
        'K' => [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001],
        'L' => [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111],
        'M' => [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001],
        'N' => [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001],
        'O' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'P' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000],
        'Q' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101],
        'R' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001],
        'S' => [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110],
        'T' => [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100],
        'U' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'V' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'W' => [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010],
        'X' => [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001],
        'Y' => [0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100],
        'Z' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111],

        // Lowercase: x-height is rows 2-6.
        'a' => [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        'b' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110],
        'c' => [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        'd' => [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111],
        'e' => [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        'f' => [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000],
        'g' => [0b00000, 0b00000, 0b01111, 0b10001, 0b01111, 0b00001, 0b01110],
        'h' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'i' => [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        'j' => [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100],
        'k' => [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010],
        'l' => [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'm' => [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001],
        'n' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'o' => [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        'p' => [0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000],
        'q' => [0b00000, 0b00000, 0b01111, 0b10001, 0b01111, 0b00001, 0b00001],
        'r' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        's' => [0b00000, 0b00000, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110],
        't' => [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110],
        'u' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        'v' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'w' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010],
        'x' => [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001],
        'y' => [0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'z' => [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111],

        // Punctuation.
        '.' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100],
        ',' => [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000],
        ':' => [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000],
        ';' => [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000],
        '-' => [0b00000, 0b00000, 0b00000, 0b01110, 0b00000, 0b00000, 0b00000],
        '_' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111],
        '/' => [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000],
        '\'' => [0b00100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000],
        '#' => [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011],
        '+' => [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000],
        '=' => [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000],
        '!' => [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100],
        '?' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100],

        _ => return None,
    };
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
    const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
    const GREY: Rgb<u8> = Rgb([128, 128, 128]);

    /// Every character the font promises to cover.
    const SUPPORTED: &str = concat!(
        "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " .,:;-_/()'#%+=!?",
    );

    /// Bounding box (x0, y0, x1, y1), exclusive ends, of the pixels matching `select`.
    fn bounds_where(
        image: &RgbImage,
        select: impl Fn(Rgb<u8>) -> bool,
    ) -> Option<(u32, u32, u32, u32)> {
        let mut bounds: Option<(u32, u32, u32, u32)> = None;
        for (x, y, pixel) in image.enumerate_pixels() {
            if select(*pixel) {
                let (x0, y0, x1, y1) = bounds.unwrap_or((x, y, x + 1, y + 1));
                bounds = Some((x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)));
            }
        }
        bounds
    }

    /// Renders `text` at scale 1 on a black canvas of exactly its `text_size`.
    fn render(text: &str) -> RgbImage {
        let (w, h) = text_size(text, 1);
        let mut image = RgbImage::from_pixel(w, h, BLACK);
        draw_text(&mut image, 0, 0, text, WHITE, 1);
        image
    }

    /// The glyph's bitmap as it ends up on screen, for comparing rendering against the tables.
    fn bitmap_of(image: &RgbImage, origin_x: u32) -> Glyph {
        let mut rows = [0u8; INK_HEIGHT as usize];
        for (row, bits) in (0u32..).zip(rows.iter_mut()) {
            for col in 0..INK_WIDTH {
                if *image.get_pixel(origin_x + col, row) == WHITE {
                    *bits |= 1 << (INK_WIDTH - 1 - col);
                }
            }
        }
        rows
    }

    #[test]
    fn text_size_bounds_the_drawn_pixels() {
        for scale in [1, 2, 3] {
            for text in [
                "n01440764 tench",
                "Tinca tinca",
                "g,j;p'q_y",
                "#%()!?",
                "W",
                "é",
            ] {
                let (x, y) = (7i64, 5i64);
                let (w, h) = text_size(text, scale);
                let mut image = RgbImage::from_pixel(w + 20, h + 20, BLACK);
                let end = draw_text(&mut image, x, y, text, WHITE, scale);
                assert_eq!(end, x + i64::from(w), "{text:?} at scale {scale}");
                let (x0, y0, x1, y1) =
                    bounds_where(&image, |p| p != BLACK).expect("text left no pixels");
                assert!(
                    i64::from(x0) >= x && i64::from(y0) >= y,
                    "{text:?} starts early"
                );
                assert!(
                    i64::from(x1) <= x + i64::from(w),
                    "{text:?} too wide at {scale}"
                );
                assert!(
                    i64::from(y1) <= y + i64::from(h),
                    "{text:?} too tall at {scale}"
                );
            }
        }
        assert_eq!(text_size("", 3), (0, 3 * GLYPH_HEIGHT));
        assert_eq!(text_size("abc", 1), (3 * GLYPH_WIDTH, GLYPH_HEIGHT));
        assert_eq!(text_size("abc", 0), (0, 0));
    }

    #[test]
    fn every_supported_character_has_a_visible_glyph() {
        for c in SUPPORTED.chars() {
            let rows = glyph(c).unwrap_or_else(|| panic!("no glyph for {c:?}"));
            assert!(
                rows.iter().all(|&r| r < 1 << INK_WIDTH),
                "{c:?} uses bits past column 5"
            );
            let blank = rows.iter().all(|&r| r == 0);
            assert_eq!(blank, c == ' ', "{c:?} blank={blank}");
            // The renderer must reproduce the table exactly in the glyph's cell.
            let image = render(&c.to_string());
            assert_eq!(bitmap_of(&image, 0), rows, "{c:?} renders differently");
        }
    }

    #[test]
    fn glyphs_are_pairwise_distinct() {
        // The brief only requires digits and lowercase to differ; all covered characters do, and
        // none is mistakable for the fallback box.
        let chars: Vec<char> = SUPPORTED.chars().collect();
        for (i, &a) in chars.iter().enumerate() {
            assert_ne!(
                glyph(a),
                Some(FALLBACK),
                "{a:?} looks like the fallback box"
            );
            for &b in &chars[i + 1..] {
                assert_ne!(glyph(a), glyph(b), "{a:?} and {b:?} share a bitmap");
            }
        }
    }

    #[test]
    fn unknown_characters_render_the_fallback_box() {
        for c in ['é', '€', '\n', '\t', '😀', '@'] {
            assert!(glyph(c).is_none(), "{c:?} unexpectedly has a glyph");
            let image = render(&format!("a{c}b"));
            assert_eq!(bitmap_of(&image, GLYPH_WIDTH), FALLBACK, "{c:?}");
        }
        // One cell per char, not per byte: 'é' is two bytes in UTF-8.
        assert_eq!(text_size("é€", 1).0, 2 * GLYPH_WIDTH);
    }

    #[test]
    fn clipping_keeps_exactly_the_in_bounds_part() {
        // Draw on a small image and on a large one with a margin; the small image must equal the
        // matching window of the large one, i.e. clipping drops pixels but never moves them.
        let (small_w, small_h) = (20u32, 12u32);
        let margin = 40u32;
        let text = "Tench 0%?";
        for scale in [1, 2] {
            for (x, y) in [
                (-7i64, -3i64),
                (-20, 5),
                (15, 8),
                (18, -6),
                (0, 10),
                (-60, -30),
            ] {
                let mut small = RgbImage::from_pixel(small_w, small_h, BLACK);
                draw_text(&mut small, x, y, text, WHITE, scale);
                draw_label(&mut small, x + 3, y + 2, text, WHITE, GREY, scale);
                let mut large =
                    RgbImage::from_pixel(small_w + 2 * margin, small_h + 2 * margin, BLACK);
                let m = i64::from(margin);
                draw_text(&mut large, x + m, y + m, text, WHITE, scale);
                draw_label(&mut large, x + 3 + m, y + 2 + m, text, WHITE, GREY, scale);
                for (px, py, pixel) in small.enumerate_pixels() {
                    let expected = large.get_pixel(px + margin, py + margin);
                    assert_eq!(pixel, expected, "({px},{py}) for origin ({x},{y}) x{scale}");
                }
            }
        }
    }

    #[test]
    fn extreme_positions_and_sizes_do_not_panic() {
        let mut image = RgbImage::from_pixel(8, 8, BLACK);
        for (x, y) in [
            (i64::MIN, i64::MIN),
            (i64::MAX, i64::MAX),
            (i64::MIN, 0),
            (0, i64::MAX),
        ] {
            draw_text(&mut image, x, y, "abc é", WHITE, 3);
            draw_label(&mut image, x, y, "abc", WHITE, GREY, 3);
        }
        assert_eq!(
            draw_text(&mut image, i64::MAX - 1, 0, "ab", WHITE, 1),
            i64::MAX
        );
        assert!(
            image.pixels().all(|p| *p == BLACK),
            "off-image text touched the image"
        );
        // Huge scale: the first font pixel covers everything; must clip, not overflow.
        draw_text(&mut image, -5, -5, "W", WHITE, u32::MAX);
        draw_label(&mut image, 0, 0, "W", WHITE, GREY, u32::MAX);
        assert_eq!(text_size("abc", u32::MAX), (u32::MAX, u32::MAX));
        // Scale 0 draws nothing at all.
        let mut blank = RgbImage::from_pixel(8, 8, BLACK);
        draw_text(&mut blank, 0, 0, "abc", WHITE, 0);
        assert!(blank.pixels().all(|p| *p == BLACK));
        // Zero-sized images are fine too.
        draw_label(&mut RgbImage::new(0, 0), 0, 0, "abc", WHITE, GREY, 2);
    }

    #[test]
    fn fit_text_shortens_only_when_needed() {
        let name = "n01440764 tench, Tinca tinca";
        let full = text_size(name, 2).0;
        assert_eq!(fit_text(name, full, 2), name);
        assert_eq!(fit_text(name, u32::MAX, 1), name);
        assert_eq!(fit_text("", 0, 1), "");

        for max_width in [full - 1, 100, 60, 30, 24, 23, 12, 11, 0] {
            let fitted = fit_text(name, max_width, 2);
            assert!(
                text_size(&fitted, 2).0 <= max_width,
                "{fitted:?} exceeds {max_width}"
            );
            assert!(fitted.chars().count() < name.chars().count());
        }
        // Takes as many characters as fit before the marker.
        assert_eq!(fit_text(name, 10 * GLYPH_WIDTH, 1), "n0144076..");
        assert_eq!(fit_text(name, 9 * GLYPH_WIDTH + 5, 1), "n014407..");
        // Dangling whitespace is dropped before the marker.
        assert_eq!(fit_text(name, 12 * GLYPH_WIDTH, 1), "n01440764..");
        assert_eq!(fit_text("ab cdefgh", 5 * GLYPH_WIDTH, 1), "ab..");
        // Too narrow for the marker: a plain prefix.
        assert_eq!(fit_text(name, 2 * GLYPH_WIDTH, 1), "n0");
        assert_eq!(fit_text(name, 5, 1), "");
        // Counts characters, not bytes.
        assert_eq!(fit_text("ééééé", 4 * GLYPH_WIDTH, 1), "éé..");
    }

    #[test]
    fn scale_two_doubles_everything() {
        let text = "Tinca 42";
        let (w1, h1) = text_size(text, 1);
        assert_eq!(text_size(text, 2), (2 * w1, 2 * h1));

        let one = render(text);
        let mut two = RgbImage::from_pixel(2 * w1, 2 * h1, BLACK);
        let end = draw_text(&mut two, 0, 0, text, WHITE, 2);
        assert_eq!(end, i64::from(2 * w1));
        for (x, y, pixel) in two.enumerate_pixels() {
            assert_eq!(pixel, one.get_pixel(x / 2, y / 2), "({x},{y})");
        }

        let mut canvas = RgbImage::new(200, 40);
        let label1 = draw_label(&mut canvas, 0, 0, text, WHITE, GREY, 1);
        let label2 = draw_label(&mut canvas, 0, 0, text, WHITE, GREY, 2);
        assert_eq!(label2, (2 * label1.0, 2 * label1.1));
    }

    #[test]
    fn draw_label_pads_the_glyphs_by_one_font_pixel() {
        let scale = 2;
        // 'H' has ink in all four outermost columns and rows of its cell, so with an H at each
        // end the glyph ink must sit exactly one font pixel inside the box on every side.
        let text = "HiH";
        let (w, h) = text_size(text, scale);
        let mut image = RgbImage::from_pixel(60, 40, BLACK);
        let (bw, bh) = draw_label(&mut image, 3, 4, text, WHITE, GREY, scale);
        assert_eq!((bw, bh), (w + scale, h + scale));
        // The box covers exactly its returned size at (3, 4)...
        assert_eq!(
            bounds_where(&image, |p| p != BLACK),
            Some((3, 4, 3 + bw, 4 + bh))
        );
        // ...and the text is inset by one font pixel (`scale` image pixels) on every side.
        let text_bounds = bounds_where(&image, |p| p == WHITE);
        let inset = (3 + scale, 4 + scale, 3 + bw - scale, 4 + bh - scale);
        assert_eq!(text_bounds, Some(inset));
        assert_eq!(draw_label(&mut image, 0, 0, "", WHITE, GREY, 1), (2, 9));
    }

    #[test]
    fn writes_a_legible_sample_png() {
        let lines = [
            "n01440764 tench, Tinca tinca 0123456789",
            "abcdefghijklmnopqrstuvwxyz",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            ".,:;-_/()'#%+=!? unknown: \u{e9}\u{20ac}",
        ];
        let scale = 2;
        let width = lines
            .iter()
            .map(|l| text_size(l, scale).0)
            .max()
            .unwrap_or(0)
            + 8;
        let line_height = text_size("", scale).1 + 6;
        let mut image = RgbImage::from_pixel(width, line_height * 6, Rgb([20, 30, 40]));
        let mut y = 4i64;
        for line in lines {
            draw_text(&mut image, 4, y, line, WHITE, scale);
            y += i64::from(line_height);
        }
        let label = fit_text(lines[0], 200, scale);
        draw_label(&mut image, 4, y, &label, BLACK, Rgb([255, 220, 0]), scale);

        // Overwrites any earlier copy; inspect it by eye when editing glyphs.
        let path = std::env::temp_dir().join("alexnet_text_sample.png");
        image.save(&path).expect("write sample PNG");
        assert!(path.exists());
    }
}
