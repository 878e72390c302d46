//! Per-image cost of the preprocessing steps: decode, resize + centre crop, and the two
//! together (with and without shrink-on-load), for a typical ImageNet photo (500×375) and a large camera photo (4000×3000).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use image::{Rgb, RgbImage};

use alexnet::preprocess::decode::{decode_bytes, DecodeOptions, SHRINK_MARGIN};
use alexnet::preprocess::resize::CenterCropResizer;

const FULL: DecodeOptions = DecodeOptions {
    max_pixels: 178_956_970,
    max_file_bytes: 1 << 30,
    shrink_floor: None,
};
const SHRINK: DecodeOptions = DecodeOptions {
    shrink_floor: Some(SHRINK_MARGIN * 256),
    ..FULL
};

/// A photo-like image: smooth gradients, edges and fine noise, so JPEG sizes are realistic.
fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let noise = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27) as u8;
        let disc = {
            let (dx, dy) = (x as i64 - w as i64 / 2, y as i64 - h as i64 / 3);
            dx * dx + dy * dy < (h as i64 / 4).pow(2)
        };
        let base = if disc { [200u8, 60, 40] } else { [40, 90, 160] };
        Rgb([
            base[0].wrapping_add((x * 50 / w) as u8).wrapping_add(noise),
            base[1].wrapping_add((y * 50 / h) as u8).wrapping_add(noise),
            base[2].wrapping_add(noise),
        ])
    })
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(
            img.as_raw(),
            img.width() as u16,
            img.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encoding a benchmark image");
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("preprocess");
    for (w, h) in [(500u32, 375u32), (4000, 3000)] {
        let img = photo(w, h);
        let bytes = jpeg(&img);
        let label = format!("{w}x{h}");
        group.throughput(Throughput::Elements(1));
        if w > 1000 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::new("decode", &label), &bytes, |b, bytes| {
            b.iter(|| decode_bytes(bytes, &FULL).unwrap())
        });
        let mut resizer = CenterCropResizer::new(256);
        let mut out = vec![0u8; 256 * 256 * 3];
        group.bench_with_input(
            BenchmarkId::new("resize_crop_256", &label),
            &img,
            |b, img| b.iter(|| resizer.resize_into(img, &mut out)),
        );
        // The whole per-image path, with and without shrink-on-load (which only applies to
        // images whose shorter side is at least 8 × 256).
        for (name, options) in [
            ("decode_resize_crop_256", FULL),
            ("shrink_decode_resize_crop_256", SHRINK),
        ] {
            group.bench_with_input(BenchmarkId::new(name, &label), &bytes, |b, bytes| {
                b.iter(|| {
                    let d = decode_bytes(bytes, &options).unwrap();
                    let source = (d.source_width, d.source_height);
                    resizer.resize_shrunk_into(&d.image, source, d.eighths, &mut out);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
