//! Turning a source file into RGB pixels, or a reason why not.
//!
//! Formats are recognised by content, never by extension (ImageNet has a PNG named `.JPEG`).
//! Dimensions are read from the header and checked before any pixel buffer is allocated, and
//! a JPEG whose entropy-coded data ends before its end-of-image marker is called truncated:
//! decoders in lenient mode return such files grey-filled without an error.
//!
//! JPEGs are decoded by libjpeg-turbo (the decoder Pillow uses, so our pixels start where
//! Pillow's do). Large ones are decoded at a fraction M/8 of their size in the DCT domain
//! ("shrink on load"), which skips most of the inverse DCT, colour conversion and resampling
//! work, progressive files included; only while the shrunk image keeps at least
//! `SHRINK_MARGIN` times the stored size on its shorter side, so that the final antialiased
//! resize still dominates the result. CMYK JPEGs, and any file libjpeg-turbo warns about or
//! refuses, go to the `image` crate's decoder instead, which gives today's verdict on them.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Why an input was not stored. The short names are what `rejects.parquet` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The file could not be read (permissions, I/O error).
    Unreadable,
    /// Not a regular file (a FIFO, a device, a socket), even after following symlinks.
    NotAFile,
    /// Zero bytes.
    Empty,
    /// Bigger than the configured file-size cap.
    FileTooLarge,
    /// Not an image format this build decodes.
    Unsupported,
    /// Width × height over the configured pixel cap, or a zero dimension.
    BadDimensions,
    /// The data ends before the image does.
    Truncated,
    /// The decoder refused the data.
    Corrupt,
}

impl RejectReason {
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::Unreadable => "unreadable",
            RejectReason::NotAFile => "not_a_file",
            RejectReason::Empty => "empty",
            RejectReason::FileTooLarge => "file_too_large",
            RejectReason::Unsupported => "unsupported_format",
            RejectReason::BadDimensions => "bad_dimensions",
            RejectReason::Truncated => "truncated",
            RejectReason::Corrupt => "corrupt",
        }
    }
}

/// An input that cannot become a training image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A JPEG is shrunk on load only while its shorter side stays at least this many times the
/// stored size, so that the final antialiased resize still halves it at least. Measured on
/// real photographs against Pillow's full decode: per-image mean absolute difference median
/// 0.10, max 0.64 levels of 255 with 2 (0.09 / 0.23 with 4), for 12% less CPU time.
pub const SHRINK_MARGIN: u32 = 2;

/// Caps that protect the process from hostile files, and the shrink-on-load hint.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    pub max_pixels: u64,
    pub max_file_bytes: u64,
    /// Decode large JPEGs at M/8 of their size while their shorter side stays at least this
    /// long (`SHRINK_MARGIN` × the stored size); `None` always decodes at full size.
    pub shrink_floor: Option<u32>,
}

/// A decoded source image, converted to 8-bit RGB.
#[derive(Debug)]
pub struct Decoded {
    /// The pixels: the full image, or the image decoded at `eighths / 8` of its size.
    pub image: RgbImage,
    /// Size of the source image (before any shrink).
    pub source_width: u32,
    pub source_height: u32,
    /// 8 for a full decode, M for one at M/8 scale (each 8×8 block became M×M pixels).
    pub eighths: u32,
    /// Format found in the bytes: `jpg`, `png`, ...
    pub format: &'static str,
    /// A progressive JPEG (for the profile: they decode much slower).
    pub progressive: bool,
}

/// The most progressive scans a JPEG may have: libjpeg-turbo's advice against files crafted
/// to make progressive decoding quadratic (ordinary encoders write about ten).
const MAX_SCANS: u32 = 500;

/// Decodes images; keeps a libjpeg-turbo handle between calls, so make one per worker thread.
/// (Keeping the pixel buffer as well was measured: no gain, and it would hold on to the
/// largest image's memory.)
#[derive(Default)]
pub struct Decoder {
    jpeg: Option<turbojpeg::Decompressor>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

/// Reads and decodes one file (a fresh decoder; workers keep one with `Decoder::decode`).
pub fn decode_file(path: &Path, limits: &DecodeOptions) -> Result<Decoded, Rejection> {
    let bytes = read_capped(path, limits.max_file_bytes)?;
    decode_bytes(&bytes, limits)
}

/// Opens `path` for reading only if it is a regular file (after following symlinks).
///
/// Opened non-blocking, so that a FIFO can't hang the process in `open`, and checked on the
/// open descriptor, so that what is read is what was checked.
fn open_regular(path: &Path) -> Result<std::fs::File, Rejection> {
    let unreadable = |e: std::io::Error| Rejection::new(RejectReason::Unreadable, e.to_string());
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(unreadable)?;
    let kind = file.metadata().map_err(unreadable)?.file_type();
    if !kind.is_file() {
        return Err(Rejection::new(
            RejectReason::NotAFile,
            format!("not a regular file ({})", describe_file_type(kind)),
        ));
    }
    Ok(file)
}

fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// The bytes of a regular file, refusing one over `max_bytes` whatever its metadata says
/// (at most `max_bytes + 1` bytes are ever read).
pub fn read_capped(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Rejection> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| Rejection::new(RejectReason::Unreadable, e.to_string());
    let too_large = |len: u64| {
        Rejection::new(
            RejectReason::FileTooLarge,
            format!("{len} bytes, over the limit of {max_bytes}"),
        )
    };
    let file = open_regular(path)?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len > max_bytes {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The image format of a file, judged by its first bytes; `None` for anything else
/// (including files that can't be read or are not regular files).
pub fn sniff_format(path: &Path) -> Option<ImageFormat> {
    use std::io::Read;
    let mut head = Vec::with_capacity(64);
    open_regular(path)
        .ok()?
        .take(64)
        .read_to_end(&mut head)
        .ok()?;
    image::guess_format(&head).ok()
}

/// Decodes an image held in memory with a fresh decoder.
pub fn decode_bytes(bytes: &[u8], limits: &DecodeOptions) -> Result<Decoded, Rejection> {
    Decoder::default().decode(bytes, limits)
}

impl Decoder {
    /// Decodes an image held in memory. Never panics: a decoder panic becomes a rejection.
    pub fn decode(&mut self, bytes: &[u8], limits: &DecodeOptions) -> Result<Decoded, Rejection> {
        if bytes.is_empty() {
            return Err(Rejection::new(RejectReason::Empty, "the file is empty"));
        }
        let format = image::guess_format(bytes).map_err(|_| {
            Rejection::new(
                RejectReason::Unsupported,
                format!("not a recognised image (starts with {})", hex_prefix(bytes)),
            )
        })?;
        let mut progressive = false;
        if format == ImageFormat::Jpeg {
            progressive = check_jpeg_structure(bytes)?.progressive;
            if let Some(decoded) = self.decode_jpeg(bytes, limits, progressive)? {
                return Ok(decoded);
            }
        }
        catch_unwind(AssertUnwindSafe(|| decode_known(bytes, format, limits)))
            .unwrap_or_else(|_| {
                Err(Rejection::new(
                    RejectReason::Corrupt,
                    "the decoder panicked on this file",
                ))
            })
            .map(|decoded| Decoded {
                progressive,
                ..decoded
            })
    }

    /// A JPEG through libjpeg-turbo, at M/8 scale when `limits` allow. `None` hands the file
    /// to the `image` crate: CMYK (whose Adobe inversion it handles), and anything
    /// libjpeg-turbo warns about or refuses, so that such files keep the verdict they always
    /// had; pixels from a warned decode are never used.
    fn decode_jpeg(
        &mut self,
        bytes: &[u8],
        limits: &DecodeOptions,
        progressive: bool,
    ) -> Result<Option<Decoded>, Rejection> {
        let jpeg = match &mut self.jpeg {
            Some(jpeg) => jpeg,
            None => match turbojpeg::Decompressor::new() {
                Ok(mut jpeg) => {
                    if jpeg.set_scan_limit(MAX_SCANS).is_err() {
                        return Ok(None);
                    }
                    self.jpeg.insert(jpeg)
                }
                Err(_) => return Ok(None),
            },
        };
        let Ok(header) = jpeg.read_header(bytes) else {
            return Ok(None);
        };
        let (width, height) = (header.width as u32, header.height as u32);
        check_dimensions(width, height, limits)?;
        let colour = matches!(
            header.colorspace,
            turbojpeg::Colorspace::YCbCr | turbojpeg::Colorspace::RGB | turbojpeg::Colorspace::Gray
        );
        if !colour || header.is_lossless {
            return Ok(None);
        }
        // Progressive files decode slower at a reduced scale (measured: their entropy decoding
        // dominates, and the scaled paths add work), so only baseline files are shrunk.
        let eighths = match limits.shrink_floor {
            Some(floor) if !progressive => shrink_eighths(width, height, floor),
            _ => 8,
        };
        let factor = turbojpeg::ScalingFactor::new(eighths as usize, 8);
        if jpeg.set_scaling_factor(factor).is_err() {
            return Ok(None);
        }
        let scaled = header.scaled(factor);
        let (w, h) = (scaled.width, scaled.height);
        let mut pixels = vec![0u8; w * h * 3];
        let image = turbojpeg::Image {
            pixels: pixels.as_mut_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        if jpeg.decompress(bytes, image).is_err() {
            return Ok(None);
        }
        let image = RgbImage::from_raw(w as u32, h as u32, pixels)
            .expect("the buffer was sized for this image");
        Ok(Some(Decoded {
            image,
            source_width: width,
            source_height: height,
            eighths,
            format: format_name(ImageFormat::Jpeg),
            progressive,
        }))
    }
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeOptions) -> Result<(), Rejection> {
    if width == 0 || height == 0 || width as u64 * height as u64 > limits.max_pixels {
        return Err(Rejection::new(
            RejectReason::BadDimensions,
            format!(
                "{width}x{height} pixels (limit {} pixels)",
                limits.max_pixels
            ),
        ));
    }
    Ok(())
}

/// Full decodes through the `image` crate (PNG, GIF, BMP, WebP, and the JPEGs libjpeg-turbo
/// doesn't take).
fn decode_known(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeOptions,
) -> Result<Decoded, Rejection> {
    let corrupt = |e: image::ImageError| classify_decode_error(&e);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    // Enough for the largest allowed image at 16 bits per channel with alpha, plus slack.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok(Decoded {
        image: to_rgb8(image),
        source_width: width,
        source_height: height,
        eighths: 8,
        format: format_name(format),
        progressive: false,
    })
}

/// 2 or 4 (eighths: decode at 1/4 or 1/2 scale), the smaller that keeps the shorter side at
/// least `floor`; 8 (a full decode) when neither does. libjpeg-turbo's other scales (3/8,
/// 5/8 to 7/8) run slower than a full decode, whose inverse DCT has SIMD code (measured:
/// 20 ms at 7/8 against 8 ms in full for a 1920×1200 photo), and 1/8 keeps only each block's
/// average, which drifts too far from a full decode.
pub fn shrink_eighths(width: u32, height: u32, floor: u32) -> u32 {
    let short = width.min(height);
    [2, 4]
        .into_iter()
        .find(|&m| (short * m).div_ceil(8) >= floor)
        .unwrap_or(8)
}

/// 8-bit RGB: grey is replicated, alpha dropped (as Pillow's `convert("RGB")`), 16-bit scaled.
fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    }
}

fn classify_decode_error(e: &image::ImageError) -> Rejection {
    use image::ImageError as E;
    let detail = e.to_string();
    let reason = match e {
        E::Unsupported(_) => RejectReason::Unsupported,
        E::Limits(_) => RejectReason::BadDimensions,
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => RejectReason::Truncated,
        _ if detail.to_ascii_lowercase().contains("eof")
            || detail.to_ascii_lowercase().contains("end of file")
            || detail.to_ascii_lowercase().contains("truncated")
            || detail.to_ascii_lowercase().contains("no more bytes") =>
        {
            RejectReason::Truncated
        }
        _ => RejectReason::Corrupt,
    };
    Rejection::new(reason, detail)
}

fn format_name(format: ImageFormat) -> &'static str {
    format
        .extensions_str()
        .first()
        .copied()
        .unwrap_or("unknown")
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Walks a JPEG's marker structure and checks that the entropy-coded data is followed by an
/// end-of-image marker. Segment lengths are followed, so thumbnails embedded in EXIF data
/// (which carry their own EOI) don't count.
pub fn check_jpeg_structure(bytes: &[u8]) -> Result<JpegInfo, Rejection> {
    let truncated = |what: &str| Rejection::new(RejectReason::Truncated, what.to_string());
    let corrupt = |what: &str| Rejection::new(RejectReason::Corrupt, what.to_string());
    if bytes.len() < 4 || bytes[0..2] != [0xFF, 0xD8] {
        return Err(corrupt("no JPEG start-of-image marker"));
    }
    let mut pos = 2;
    let mut seen_scan = false;
    // The most entropy-coded bytes one scan of the frame can need; a scan longer than that
    // belongs to another (larger) image than the header describes.
    let mut scan_limit: Option<usize> = None;
    let mut info = JpegInfo::default();
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while pos < bytes.len() && bytes[pos] == 0xFF && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if pos + 1 >= bytes.len() {
            return Err(truncated("the file ends before the end-of-image marker"));
        }
        if bytes[pos] != 0xFF {
            return Err(corrupt(&format!("expected a marker at byte {pos}")));
        }
        let marker = bytes[pos + 1];
        pos += 2;
        match marker {
            0xD9 if seen_scan => return Ok(info),
            0xD9 => return Err(corrupt("end-of-image marker before any image data")),
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(pos..pos + 2) else {
            return Err(truncated("the file ends inside a marker segment"));
        };
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        if len < 2 {
            return Err(corrupt(&format!("bad segment length at byte {pos}")));
        }
        let segment = pos + 2..pos + len;
        pos += len;
        if pos > bytes.len() {
            return Err(truncated("the file ends inside a marker segment"));
        }
        if is_start_of_frame(marker) {
            info.progressive |= matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
            let limit = max_scan_bytes(&bytes[segment])
                .ok_or_else(|| corrupt("malformed start-of-frame header"))?;
            scan_limit = Some(scan_limit.map_or(limit, |l: usize| l.max(limit)));
        }
        if marker == 0xDA {
            seen_scan = true;
            let start = pos;
            pos = skip_entropy_coded_data(bytes, pos)
                .ok_or_else(|| truncated("the file ends inside the image data"))?;
            if scan_limit.is_some_and(|limit| pos - start > limit) {
                return Err(corrupt(&format!(
                    "a scan of {} bytes is far more than the header's image size can hold \
                     (the header is forged or damaged)",
                    pos - start
                )));
            }
        }
    }
}

/// What the marker walk learns about a JPEG.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JpegInfo {
    pub progressive: bool,
}

/// SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
fn is_start_of_frame(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// An upper bound on the entropy-coded bytes of one scan of the frame whose SOF segment body
/// is `sof` (precision, height, width, components with sampling factors). Every 8×8 block
/// codes at most 64 coefficients of a 16-bit Huffman code plus at most 15 magnitude bits,
/// under 256 bytes, doubled for byte stuffing; plus a restart marker per MCU and slack.
/// `usize::MAX` when the height is left to a later DNL marker. `None` if malformed.
fn max_scan_bytes(sof: &[u8]) -> Option<usize> {
    let height = u16::from_be_bytes([*sof.get(1)?, *sof.get(2)?]) as usize;
    let width = u16::from_be_bytes([*sof.get(3)?, *sof.get(4)?]) as usize;
    let count = *sof.get(5)? as usize;
    let factors: Vec<(usize, usize)> = (0..count)
        .map(|c| {
            sof.get(6 + 3 * c + 1)
                .map(|&hv| ((hv >> 4) as usize, (hv & 15) as usize))
        })
        .collect::<Option<_>>()?;
    if height == 0 {
        return Some(usize::MAX);
    }
    let h_max = factors.iter().map(|f| f.0).max()?.max(1);
    let v_max = factors.iter().map(|f| f.1).max()?.max(1);
    let mcus = width.div_ceil(8 * h_max) * height.div_ceil(8 * v_max);
    let blocks_per_mcu: usize = factors.iter().map(|(h, v)| h * v).sum();
    Some(mcus * (blocks_per_mcu * 512 + 2) + 2048)
}

/// Position of the first marker after entropy-coded data starting at `pos`: a 0xFF followed
/// by anything but a stuffed zero or a restart marker. `None` if the data runs off the end.
fn skip_entropy_coded_data(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let ff = pos + bytes.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        match bytes.get(ff + 1)? {
            0x00 | 0xD0..=0xD7 | 0xFF => pos = ff + 1,
            _ => return Some(ff),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageEncoder, Rgb};

    const LIMITS: DecodeOptions = DecodeOptions {
        max_pixels: 50_000_000,
        max_file_bytes: 1 << 30,
        shrink_floor: None,
    };

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                (((x / 9) + (y / 9)) % 2 * 180) as u8,
            ])
        })
    }

    fn jpeg(img: &RgbImage, progressive: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
        enc.set_progressive(progressive);
        enc.encode(
            img.as_raw(),
            img.width() as u16,
            img.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
        out
    }

    /// `img` as an Adobe CMYK JPEG with pure CMY inks and no black (R = 255 − C, and so on).
    fn cmyk_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
        let cmyk: Vec<u8> = img
            .pixels()
            .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
            .collect();
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, quality)
            .encode(
                &cmyk,
                img.width() as u16,
                img.height() as u16,
                jpeg_encoder::ColorType::Cmyk,
            )
            .unwrap();
        bytes
    }

    fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y) as f64)
            .sum::<f64>()
            / a.as_raw().len() as f64
    }

    #[test]
    fn baseline_and_progressive_jpegs_decode() {
        let img = photo(120, 80);
        for progressive in [false, true] {
            let d = decode_bytes(&jpeg(&img, progressive), &LIMITS).unwrap();
            assert_eq!(d.format, "jpg");
            assert!(
                mean_abs_diff(&d.image, &img) < 4.0,
                "progressive={progressive}"
            );
        }
    }

    #[test]
    fn grayscale_is_replicated_to_rgb() {
        let grey = GrayImage::from_fn(64, 48, |x, _| image::Luma([(x * 4) as u8]));
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 95)
            .encode(grey.as_raw(), 64, 48, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let d = decode_bytes(&bytes, &LIMITS).unwrap();
        assert!(d.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!(d.image.get_pixel(60, 10)[0] > 200);
    }

    #[test]
    fn adobe_cmyk_jpeg_becomes_the_right_rgb() {
        // Pure CMY inks with no black: R = 255 - C, and so on, after Adobe's inversion.
        let img = photo(64, 64);
        let d = decode_bytes(&cmyk_jpeg(&img, 95), &LIMITS).unwrap();
        assert!(mean_abs_diff(&d.image, &img) < 4.0);
    }

    #[test]
    fn png_named_jpeg_is_decoded_as_png() {
        let img = photo(40, 30);
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(img.as_raw(), 40, 30, image::ExtendedColorType::Rgb8)
            .unwrap();
        let d = decode_bytes(&bytes, &LIMITS).unwrap();
        assert_eq!(d.format, "png");
        assert_eq!(d.image, img);
    }

    #[test]
    fn sixteen_bit_and_alpha_become_8_bit_rgb() {
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(8, 8, |x, _| {
            image::Rgba([(x as u16) * 8000, 65535, 0, 1234])
        });
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(
                bytemuck_u16(img.as_raw()).as_slice(),
                8,
                8,
                image::ExtendedColorType::Rgba16,
            )
            .unwrap();
        let d = decode_bytes(&bytes, &LIMITS).unwrap();
        assert_eq!(d.image.get_pixel(0, 0), &Rgb([0, 255, 0]));
        assert_eq!(
            d.image.get_pixel(4, 3)[0],
            (32000.0f64 / 257.0).round() as u8
        );
    }

    /// PNG stores 16-bit samples big-endian; the encoder takes native-endian bytes.
    fn bytemuck_u16(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|s| s.to_ne_bytes()).collect()
    }

    #[test]
    fn truncated_jpeg_is_rejected_not_grey_filled() {
        let bytes = jpeg(&photo(400, 300), false);
        for keep in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
            let err = decode_bytes(&bytes[..keep], &LIMITS).unwrap_err();
            assert_eq!(err.reason, RejectReason::Truncated, "kept {keep}: {err:?}");
        }
        let progressive = jpeg(&photo(400, 300), true);
        let err = decode_bytes(&progressive[..progressive.len() / 2], &LIMITS).unwrap_err();
        assert_eq!(err.reason, RejectReason::Truncated);
    }

    #[test]
    fn a_forged_small_frame_header_on_a_large_scan_is_rejected() {
        let noisy = RgbImage::from_fn(400, 300, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 24;
            Rgb([v as u8, (v * 3) as u8, (x + y) as u8])
        });
        for progressive in [false, true] {
            let mut bytes = jpeg(&noisy, progressive);
            decode_bytes(&bytes, &LIMITS).unwrap();
            let sof = bytes
                .windows(2)
                .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
                .unwrap();
            bytes[sof + 5..sof + 9].copy_from_slice(&[0, 1, 0, 1]); // 1×1
            let err = decode_bytes(&bytes, &LIMITS).unwrap_err();
            assert_eq!(err.reason, RejectReason::Corrupt, "{err:?}");
            assert!(err.detail.contains("forged"), "{}", err.detail);
        }
        // Small honest images pass the bound.
        decode_bytes(&jpeg(&photo(1, 1), false), &LIMITS).unwrap();
        decode_bytes(&jpeg(&photo(9, 7), true), &LIMITS).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn fifos_and_devices_are_rejected_without_blocking_or_reading_forever() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.JPEG");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = decode_file(&fifo, &LIMITS).unwrap_err();
        assert_eq!(err.reason, RejectReason::NotAFile, "{err:?}");
        assert!(err.detail.contains("FIFO"), "{}", err.detail);
        for device in ["/dev/zero", "/dev/urandom"] {
            let link = dir.path().join(format!("{}.JPEG", &device[5..]));
            std::os::unix::fs::symlink(device, &link).unwrap();
            let err = decode_file(&link, &LIMITS).unwrap_err();
            assert_eq!(err.reason, RejectReason::NotAFile, "{device}: {err:?}");
        }
        assert_eq!(sniff_format(&fifo), None);
    }

    #[test]
    fn reads_stop_at_the_byte_cap_whatever_the_size_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.JPEG");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        assert_eq!(read_capped(&path, 1000).unwrap().len(), 1000);
        let err = read_capped(&path, 999).unwrap_err();
        assert_eq!(err.reason, RejectReason::FileTooLarge);
    }

    #[test]
    fn trailing_bytes_after_the_image_are_fine() {
        let mut bytes = jpeg(&photo(50, 50), false);
        bytes.extend_from_slice(b"trailing junk \xFF\xD8 written by some camera");
        decode_bytes(&bytes, &LIMITS).unwrap();
    }

    #[test]
    fn exif_thumbnail_eoi_does_not_hide_truncation() {
        let full = jpeg(&photo(200, 200), false);
        let thumb = jpeg(&photo(16, 16), false);
        // Insert an APP1 segment carrying a complete JPEG (with its own EOI) after SOI.
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
        app1.extend_from_slice(&thumb);
        let mut bytes = full[..2].to_vec();
        bytes.extend_from_slice(&app1);
        bytes.extend_from_slice(&full[2..]);
        decode_bytes(&bytes, &LIMITS).unwrap();
        let cut = bytes.len() - full.len() / 2;
        let err = decode_bytes(&bytes[..cut], &LIMITS).unwrap_err();
        assert_eq!(err.reason, RejectReason::Truncated);
    }

    #[test]
    fn empty_garbage_and_text_are_rejected_with_reasons() {
        assert_eq!(
            decode_bytes(b"", &LIMITS).unwrap_err().reason,
            RejectReason::Empty
        );
        let err = decode_bytes(b"hello, this is not an image", &LIMITS).unwrap_err();
        assert_eq!(err.reason, RejectReason::Unsupported);
        assert!(err.detail.contains("68 65 6c"), "{}", err.detail);
        // A JPEG header followed by noise.
        let mut bytes = jpeg(&photo(64, 64), false);
        let n = bytes.len();
        for (i, b) in bytes[200..n - 2].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7) | 1;
        }
        // Whatever the decoder makes of it, it must not panic or crash the process.
        let _ = decode_bytes(&bytes, &LIMITS);
    }

    #[test]
    fn oversized_dimensions_are_refused_before_decoding() {
        // A PNG header claiming 100000 × 100000 pixels, with no data behind it.
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = decode_bytes(&bytes, &LIMITS).unwrap_err();
        assert!(
            matches!(
                err.reason,
                RejectReason::BadDimensions | RejectReason::Corrupt
            ),
            "{err:?}"
        );
        // A JPEG whose SOF claims 60000 × 60000.
        let mut jpg = jpeg(&photo(16, 16), false);
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
        jpg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
        let err = decode_bytes(&jpg, &LIMITS).unwrap_err();
        assert!(
            matches!(
                err.reason,
                RejectReason::BadDimensions | RejectReason::Corrupt
            ),
            "{err:?}"
        );
    }

    #[test]
    fn files_over_the_size_cap_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.JPEG");
        std::fs::write(&path, jpeg(&photo(64, 64), false)).unwrap();
        let limits = DecodeOptions {
            max_file_bytes: 100,
            ..LIMITS
        };
        let err = decode_file(&path, &limits).unwrap_err();
        assert_eq!(err.reason, RejectReason::FileTooLarge);
        let err = decode_file(&dir.path().join("missing.JPEG"), &LIMITS).unwrap_err();
        assert_eq!(err.reason, RejectReason::Unreadable);
    }

    #[test]
    fn shrink_keeps_the_shorter_side_above_the_floor() {
        assert_eq!(shrink_eighths(500, 375, 1024), 8);
        assert_eq!(shrink_eighths(4000, 2046, 1024), 8); // 1023 px at 1/2
        assert_eq!(shrink_eighths(4000, 2048, 1024), 4);
        assert_eq!(shrink_eighths(5640, 3172, 1024), 4);
        assert_eq!(shrink_eighths(6000, 4500, 1024), 2);
        // 1/8 scale (DC coefficients only) is never used: it drifts too far from a full decode.
        assert_eq!(shrink_eighths(9000, 8192, 1024), 2);
    }

    #[test]
    fn large_jpegs_are_shrunk_on_load_and_cmyk_falls_back() {
        let options = DecodeOptions {
            shrink_floor: Some(256),
            ..LIMITS
        };
        let img = photo(1100, 520);
        let d = decode_bytes(&jpeg(&img, false), &options).unwrap();
        // 520 · 4/8 = 260 ≥ 256; 3/8 would be 195.
        assert_eq!((d.source_width, d.source_height, d.eighths), (1100, 520, 4));
        assert_eq!(d.image.dimensions(), (550, 260));
        // Progressive files are decoded in full: scaling makes them slower.
        let d = decode_bytes(&jpeg(&img, true), &options).unwrap();
        assert_eq!((d.eighths, d.progressive), (8, true));

        let grey = GrayImage::from_fn(600, 530, |x, y| image::Luma([(x ^ y) as u8]));
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 90)
            .encode(grey.as_raw(), 600, 530, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let d = decode_bytes(&bytes, &options).unwrap();
        assert_eq!((d.eighths, d.image.dimensions()), (4, (300, 265)));
        assert!(d.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));

        let d = decode_bytes(&cmyk_jpeg(&img, 90), &options).unwrap();
        assert_eq!((d.eighths, d.image.dimensions()), (8, (1100, 520)));
        assert!(mean_abs_diff(&d.image, &img) < 4.0);
    }

    #[test]
    fn a_file_libjpeg_turbo_warns_about_keeps_the_verdict_of_the_other_decoder() {
        // Garbage in the middle of the scan: libjpeg-turbo warns ("corrupt data") and
        // carries on; the pixels of such a decode are never used, the image crate's decoder
        // decides instead — accepted or rejected, never a crash.
        let mut bytes = jpeg(&photo(300, 200), false);
        let n = bytes.len();
        for b in &mut bytes[n / 2..n / 2 + 40] {
            *b = 0x5A;
        }
        let ours = decode_bytes(&bytes, &LIMITS);
        let image_crate = check_jpeg_structure(&bytes)
            .and_then(|_| decode_known(&bytes, ImageFormat::Jpeg, &LIMITS));
        assert_eq!(ours.is_ok(), image_crate.is_ok());
        if let (Ok(ours), Ok(theirs)) = (&ours, &image_crate) {
            assert_eq!(ours.image.as_raw(), theirs.image.as_raw());
        }
    }

    #[test]
    fn one_decoder_decodes_many_files() {
        let mut decoder = Decoder::default();
        for (w, h) in [(64, 48), (300, 200), (17, 9)] {
            let d = decoder.decode(&jpeg(&photo(w, h), false), &LIMITS).unwrap();
            assert_eq!(d.image.dimensions(), (w, h));
            assert!(mean_abs_diff(&d.image, &photo(w, h)) < 4.0);
        }
    }
}
