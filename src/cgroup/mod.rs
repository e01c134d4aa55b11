//! Per-job control groups (placeholder, being written).
