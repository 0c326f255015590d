//! Feeds arbitrary frames to one engine (RFC or `aws` profile), on the
//! outside port and on inside attachments, with fragment floods across two
//! attachments and an advancing virtual clock. The body, and the input
//! format, are in `dataplane::fuzzing` (so `cargo test` runs it too, over
//! seeded inputs: `dataplane/engine/tests/fuzz_body.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::run(data);
});
