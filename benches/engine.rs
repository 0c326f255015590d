//! Criterion benchmarks of the dataplane engine.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn checksum(c: &mut Criterion) {
    let data = vec![0xa5u8; 1480];
    c.bench_function("checksum/full_1480B", |b| b.iter(|| dataplane::checksum::checksum(black_box(&data))));
}

criterion_group!(benches, checksum);
criterion_main!(benches);
