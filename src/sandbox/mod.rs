//! The job init process (placeholder, being written).
