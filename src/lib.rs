//! `jobs`: a multi-user job server over mutual TLS.
//!
//! (Crate documentation is completed in a later step.)

pub mod auth;
pub mod ca;

/// Generated gRPC types and stubs for `proto/jobs/v1/jobs.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("jobs.v1");
}
pub mod exec;
pub mod job;
pub mod output;
pub mod tls;
pub mod server;
pub mod client;
