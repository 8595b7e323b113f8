//! Compression speed and ratio on a 64 KiB HTML page: the gzip implementation gatehouse uses
//! (flate2 on zlib-rs) against flate2's default backend (miniz_oxide), and brotli and zstd
//! at gatehouse's default levels. `cargo bench --bench compression`.

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A 64 KiB HTML page with the repetition real pages have: markup, classes, some text.
fn page() -> Vec<u8> {
    let mut page =
        String::from("<!doctype html><html><head><title>Catalogue</title></head><body><ul>\n");
    let mut i = 0u32;
    while page.len() < 64 * 1024 - 200 {
        page.push_str(&format!(
            "<li class=\"product\" data-id=\"{i}\"><a href=\"/products/{i}\">Product {i}</a> \
             <span class=\"price\">{}.{:02} EUR</span> in stock: {}</li>\n",
            i * 7 % 300,
            i * 13 % 100,
            !i.is_multiple_of(3)
        ));
        i += 1;
    }
    page.push_str("</ul></body></html>\n");
    page.into_bytes()
}

fn zlib_rs_gzip(input: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(input).unwrap();
    encoder.finish().unwrap()
}

fn miniz_deflate(input: &[u8], level: u8) -> Vec<u8> {
    // Raw deflate, the same stream gzip wraps (its 18-byte header and trailer aside).
    miniz_oxide::deflate::compress_to_vec(input, level)
}

fn brotli(input: &[u8], quality: u32) -> Vec<u8> {
    let mut encoder = brotli::CompressorWriter::new(Vec::new(), 16 * 1024, quality, 22);
    encoder.write_all(input).unwrap();
    encoder.into_inner()
}

fn zstd(input: &[u8], level: i32) -> Vec<u8> {
    zstd::encode_all(input, level).unwrap()
}

fn compress(c: &mut Criterion) {
    let page = page();
    eprintln!(
        "64 KiB page, compressed sizes: zlib-rs gzip 1 {} / 5 {} / 6 {}; miniz deflate 1 {} / 5 {} / 6 {}; br 4 {}; zstd 3 {}",
        zlib_rs_gzip(&page, 1).len(),
        zlib_rs_gzip(&page, 5).len(),
        zlib_rs_gzip(&page, 6).len(),
        miniz_deflate(&page, 1).len() + 18,
        miniz_deflate(&page, 5).len() + 18,
        miniz_deflate(&page, 6).len() + 18,
        brotli(&page, 4).len(),
        zstd(&page, 3).len(),
    );
    let mut group = c.benchmark_group("compress_64k_html");
    group.throughput(Throughput::Bytes(page.len() as u64));
    for level in [1u32, 5, 6] {
        group.bench_function(format!("zlib-rs gzip {level}"), |b| {
            b.iter(|| zlib_rs_gzip(black_box(&page), level))
        });
        group.bench_function(format!("miniz_oxide deflate {level}"), |b| {
            b.iter(|| miniz_deflate(black_box(&page), level as u8))
        });
    }
    group.bench_function("brotli 4", |b| b.iter(|| brotli(black_box(&page), 4)));
    group.bench_function("zstd 3", |b| b.iter(|| zstd(black_box(&page), 3)));
    group.finish();
}

criterion_group!(benches, compress);
criterion_main!(benches);
