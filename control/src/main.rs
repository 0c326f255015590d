//! The `hyperplane` binary.
fn main() {}
