//! Drawing on RGB images with plotters, in the one typeface every picture the crate makes uses
//! (charts, contact-sheet labels): DejaVu Sans, compiled into the binary so that the output is
//! the same on every machine and needs no system fonts.

use std::sync::Once;

use image::RgbImage;
use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::{BitMapBackend, DrawingArea, DrawingBackend, IntoDrawingArea};
use plotters::style::{register_font, FontDesc, FontFamily, FontStyle, TextStyle};

/// What drawing on an image can fail with (in practice only a font that is not registered).
pub type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

/// The whole image as a plotters drawing area.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Plotters' generic sans-serif name, so that its own defaults find the font as well.
const FAMILY: FontFamily<'static> = FontFamily::SansSerif;

/// DejaVu Sans at `size` pixels.
#[must_use]
pub fn font(size: f64) -> FontDesc<'static> {
    register_font_once();
    FontDesc::new(FAMILY, size, FontStyle::Normal)
}

/// Runs `draw` on `image` (modified in place).
pub fn draw_on<T>(
    image: &mut RgbImage,
    draw: impl FnOnce(&Area<'_>) -> Result<T, DrawError>,
) -> Result<T, DrawError> {
    register_font_once();
    let size = image.dimensions();
    let area = BitMapBackend::with_buffer(image, size).into_drawing_area();
    let result = draw(&area)?;
    area.present()?;
    Ok(result)
}

/// `text` as it fits in `max_width` pixels in `style`: whole, or cut short with an ellipsis.
pub fn fit(
    area: &Area<'_>,
    text: &str,
    style: &TextStyle<'_>,
    max_width: u32,
) -> Result<String, DrawError> {
    let fits = |s: &str| -> Result<bool, DrawError> {
        Ok(area.estimate_text_size(s, style)?.0 <= max_width)
    };
    if fits(text)? {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (1..chars.len()).rev() {
        let cut: String = chars[..keep].iter().chain(['…'].iter()).collect();
        if fits(&cut)? {
            return Ok(cut);
        }
    }
    Ok(String::new())
}

/// Plotters keeps registered fonts in a process-wide table; once is enough.
fn register_font_once() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are fixed at build time, so a font that does not parse is a broken build
        // rather than something a run could recover from.
        if register_font(FAMILY.as_str(), FontStyle::Normal, dejavu::sans::regular()).is_err() {
            panic!("the DejaVu Sans font compiled into this binary does not parse");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_short_text_and_cuts_long_text_to_width() {
        let mut image = RgbImage::new(10, 10);
        let style = TextStyle::from(font(14.0));
        draw_on(&mut image, |area| {
            assert_eq!(fit(area, "cat", &style, 200)?, "cat");
            let long = "a very long class name that cannot possibly fit";
            let cut = fit(area, long, &style, 80)?;
            assert!(cut.ends_with('…') && cut.len() < long.len(), "{cut}");
            assert!(area.estimate_text_size(&cut, &style)?.0 <= 80);
            assert_eq!(fit(area, long, &style, 0)?, "");
            Ok(())
        })
        .unwrap();
    }
}
