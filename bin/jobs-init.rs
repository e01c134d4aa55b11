//! `jobs-init`: placeholder.
fn main() {}
