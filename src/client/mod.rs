//! The client side: connecting to `jobsd` over mutual TLS and calling it.
//!
//! This module owns how a client reaches the daemon (TCP, TLS 1.3 through
//! rustls, HTTP/2 through tonic) and turns the vague failures of a refused
//! handshake into errors that name the likely cause: our certificate expired,
//! the server does not trust our CA, the server's certificate is not valid
//! for the name we dialled. It must not print or choose exit codes; the
//! `jobs` binary does that.
//!
//! Unary calls are bounded by [`ConnectOptions::timeout`]; output streams are
//! not, since a job may stay quiet for hours. HTTP/2 keepalive PINGs
//! ([`KEEPALIVE_INTERVAL`]) keep such streams alive through idle periods and
//! detect a vanished server.
//!
//! [`expiry_warning`] finds a certificate that expires within
//! [`EXPIRY_WARNING`], so that the binaries can say so while there is still
//! time to renew it.

mod connect;
mod expiry;
pub mod format;
pub mod units;

use std::fmt;
use std::time::Duration;

use tonic::Streaming;
use tonic::transport::Channel;

use crate::proto;
use crate::proto::job_service_client::JobServiceClient;
use crate::tls::{PemFiles, TlsError};

pub use connect::ConnectError;
pub use expiry::{EXPIRY_WARNING, ExpiryWarning, expiry_warning};

/// Default deadline for connecting and for each unary call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a connection the server closed before the TLS handshake
/// (it sheds load when every pending slot is taken) is tried again, after a
/// random 50–100 % of [`SHED_FIRST_BACKOFF`], then twice that, and so on:
/// at most 3.1 s of waiting over the five, all within the call's timeout.
/// The randomness spreads a burst of refused clients over time, so that
/// they do not come back at once.
pub const SHED_RETRIES: u32 = 5;

/// The first wait of [`SHED_RETRIES`].
pub const SHED_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A random 50–100 % of `base`.
fn jittered(base: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64 % 1_000_000;
    base / 2 + base.mul_f64(random as f64 / 2_000_000.0)
}

/// Interval of the client's HTTP/2 PINGs, sent also while no call is open.
/// The server accepts pings at any rate, so this never provokes GOAWAY.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is considered dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 receive window per stream, in bytes. Together with
/// [`CONNECTION_WINDOW`] it lets up to 15 unread streams sit on one connection
/// without stalling the others (RFC 9113 §5.2).
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 receive window per connection, in bytes.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Where the daemon is and who we are.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `HOST:PORT`; HOST is a DNS name or an IP address (IPv6 in brackets).
    /// The server's certificate must be valid for HOST.
    pub addr: String,
    /// CA certificate, our certificate and our private key.
    pub pem: PemFiles,
    /// Deadline for connecting and for each unary call.
    pub timeout: Duration,
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The CA, certificate or key file is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `addr` is not `HOST:PORT`.
    #[error("address '{addr}' is not HOST:PORT (IPv6 as [::1]:PORT)")]
    BadAddress {
        /// The address given.
        addr: String,
    },
    /// Connecting (TCP or TLS) failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// Connecting or a unary call took longer than the deadline.
    #[error("no answer from {addr} within {} s", timeout.as_secs())]
    Timeout {
        /// The address dialled.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The server answered with an error status.
    #[error("{}", describe_status(.0))]
    Rpc(tonic::Status),
}

impl ClientError {
    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc(s) => Some(s.code()),
            _ => None,
        }
    }
}

fn describe_status(s: &tonic::Status) -> String {
    let what = match s.code() {
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::NotFound => "not found",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::ResourceExhausted => "limit reached",
        tonic::Code::Unavailable => "server unavailable",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Internal => "server error",
        code => return format!("request failed ({code:?}): {}", s.message()),
    };
    if s.message().is_empty() {
        format!("{what} ({:?})", s.code())
    } else {
        format!("{what}: {}", s.message())
    }
}

/// A status that tonic made locally from a transport failure (it carries the
/// failure as its source; a status the server sent has none) means the
/// connection went away, whatever code tonic picked for it (CANCELLED for a
/// closed connection, INTERNAL for an HTTP/2 GOAWAY): report UNAVAILABLE.
fn transport_status(s: tonic::Status) -> tonic::Status {
    use std::error::Error;
    if s.source().is_some() && s.code() != tonic::Code::Unavailable {
        tonic::Status::unavailable(format!("connection to the server lost ({})", s.message()))
    } else {
        s
    }
}

/// Most pages [`Client::list`] follows before giving up on the server. A
/// page holds at least one job and, with ordinary commands, hundreds; a
/// million pages is far past any real listing, and only stops a server that
/// issues fresh tokens forever.
pub const MAX_LIST_PAGES: usize = 1_000_000;

/// A connection to `jobsd`. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    rpc: JobServiceClient<Channel>,
    addr: String,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).finish()
    }
}

impl Client {
    /// Connects and completes the TLS handshake, including the server's
    /// verdict on our certificate, so that a refused certificate is reported
    /// here rather than on the first call.
    ///
    /// # Errors
    /// [`ClientError::Tls`] (also when our certificate is one the server is
    /// bound to refuse: expired, not yet valid, a CA, not for client auth),
    /// [`ClientError::BadAddress`], [`ClientError::Connect`] (whose source
    /// says whether TCP, the server's certificate or ours was the problem),
    /// [`ClientError::Timeout`].
    pub async fn connect(options: &ConnectOptions) -> Result<Self, ClientError> {
        let pem = options.pem.read()?;
        let tls = options.pem.client_config_from(&pem)?;
        let target =
            connect::Target::parse(&options.addr).ok_or_else(|| ClientError::BadAddress {
                addr: options.addr.clone(),
            })?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", options.addr))
            .map_err(|_| ClientError::BadAddress {
                addr: options.addr.clone(),
            })?
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let connector = connect::connector(target, tls);
        let attempts = async {
            let mut backoff = SHED_FIRST_BACKOFF;
            let mut retries = 0;
            loop {
                match endpoint.connect_with_connector(connector.clone()).await {
                    Ok(channel) => return Ok(channel),
                    Err(e) => match ConnectError::from_transport(&e) {
                        ConnectError::ClosedBeforeHandshake if retries < SHED_RETRIES => {
                            retries += 1;
                            tokio::time::sleep(jittered(backoff)).await;
                            backoff *= 2;
                        }
                        source => {
                            return Err(ClientError::Connect {
                                addr: options.addr.clone(),
                                source,
                            });
                        }
                    },
                }
            }
        };
        let channel = tokio::time::timeout(options.timeout, attempts)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: options.addr.clone(),
                timeout: options.timeout,
            })??;
        Ok(Self {
            rpc: JobServiceClient::new(channel),
            addr: options.addr.clone(),
            timeout: options.timeout,
        })
    }

    async fn unary<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(ClientError::Rpc(transport_status(s))),
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// Starts `program` with `args`; returns the new job's status.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] with INVALID_ARGUMENT for a bad command,
    /// [`ClientError::Timeout`].
    pub async fn start(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<proto::JobStatus, ClientError> {
        self.start_with_limits(program, args, proto::Limits::default())
            .await
    }

    /// Starts `program` with `args` under `limits` (unset fields take the
    /// server's ceilings); returns the new job's status.
    ///
    /// # Errors
    /// As [`Client::start`], and INVALID_ARGUMENT for a limit above the
    /// server's ceiling, FAILED_PRECONDITION when the server cannot limit.
    pub async fn start_with_limits(
        &self,
        program: &str,
        args: &[String],
        limits: proto::Limits,
    ) -> Result<proto::JobStatus, ClientError> {
        let mut rpc = self.rpc.clone();
        let request = proto::StartRequest {
            program: program.to_owned(),
            args: args.to_vec(),
            limits: Some(limits),
        };
        let response = self.unary(rpc.start(request)).await?;
        response
            .status
            .ok_or_else(|| ClientError::Rpc(tonic::Status::internal("server sent no status")))
    }

    /// Stops job `id` and returns its final status. Waits up to
    /// [`crate::job::MAX_GRACE`] plus [`ConnectOptions::timeout`].
    ///
    /// # Errors
    /// [`ClientError::Rpc`] (NOT_FOUND, INVALID_ARGUMENT), [`ClientError::Timeout`].
    pub async fn stop(&self, id: &str) -> Result<proto::JobStatus, ClientError> {
        let mut rpc = self.rpc.clone();
        let call = rpc.stop(proto::StopRequest { id: id.to_owned() });
        // The server waits out its grace period (at most MAX_GRACE) before
        // answering.
        let deadline = self.timeout + crate::job::MAX_GRACE;
        let response = match tokio::time::timeout(deadline, call).await {
            Ok(r) => r
                .map_err(|s| ClientError::Rpc(transport_status(s)))?
                .into_inner(),
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    timeout: deadline,
                });
            }
        };
        response
            .status
            .ok_or_else(|| ClientError::Rpc(tonic::Status::internal("server sent no status")))
    }

    /// Stops every running job of the identity `owner` (`sha256:…`; admins
    /// only) and returns their final statuses, oldest start first.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] with PERMISSION_DENIED for a non-admin,
    /// INVALID_ARGUMENT for a malformed fingerprint; [`ClientError::Timeout`].
    pub async fn stop_owner(&self, owner: &str) -> Result<Vec<proto::JobStatus>, ClientError> {
        let mut rpc = self.rpc.clone();
        let call = rpc.stop_owner(proto::StopOwnerRequest {
            owner: owner.to_owned(),
        });
        // As `stop`: the jobs are stopped at once, so one grace period.
        let deadline = self.timeout + crate::job::MAX_GRACE;
        match tokio::time::timeout(deadline, call).await {
            Ok(r) => Ok(r
                .map_err(|s| ClientError::Rpc(transport_status(s)))?
                .into_inner()
                .stopped),
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr.clone(),
                timeout: deadline,
            }),
        }
    }

    /// The status of job `id`.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] (NOT_FOUND, INVALID_ARGUMENT), [`ClientError::Timeout`].
    pub async fn status(&self, id: &str) -> Result<proto::JobStatus, ClientError> {
        let mut rpc = self.rpc.clone();
        let response = self
            .unary(rpc.status(proto::StatusRequest { id: id.to_owned() }))
            .await?;
        response
            .status
            .ok_or_else(|| ClientError::Rpc(tonic::Status::internal("server sent no status")))
    }

    /// The caller's jobs, oldest first; with `all_users`, every user's jobs
    /// (the server's policy must name the caller an admin). Follows the
    /// server's pages ([`Client::list_page`]) to the last one; each page is a
    /// separate call under the timeout. Jobs started while it pages are
    /// included, jobs removed meanwhile may be.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] (PERMISSION_DENIED for `all_users` from a
    /// non-admin; INTERNAL when the server repeats a page token or sends
    /// more than [`MAX_LIST_PAGES`] pages), [`ClientError::Timeout`].
    pub async fn list(&self, all_users: bool) -> Result<Vec<proto::JobStatus>, ClientError> {
        let mut jobs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut token = String::new();
        for _ in 0..MAX_LIST_PAGES {
            let page = self.list_page(all_users, 0, &token).await?;
            jobs.extend(page.jobs);
            if page.next_page_token.is_empty() {
                return Ok(jobs);
            }
            // A server that sends a token twice would loop forever.
            if !seen.insert(page.next_page_token.clone()) {
                return Err(ClientError::Rpc(tonic::Status::internal(
                    "server repeated a List page token",
                )));
            }
            token = page.next_page_token;
        }
        Err(ClientError::Rpc(tonic::Status::internal(format!(
            "server sent more than {MAX_LIST_PAGES} List pages"
        ))))
    }

    /// One page of the caller's jobs (with `all_users`, every user's),
    /// oldest first: at most `page_size` jobs (0: the server's default), after
    /// the job `page_token` names (empty: from the first). The response's
    /// `next_page_token` asks for the next page; empty means this was the
    /// last. See `ListRequest` in the protocol for the server's limits.
    ///
    /// # Errors
    /// As [`Client::list`], and INVALID_ARGUMENT for a negative `page_size`
    /// or a `page_token` the server did not issue.
    pub async fn list_page(
        &self,
        all_users: bool,
        page_size: i32,
        page_token: &str,
    ) -> Result<proto::ListResponse, ClientError> {
        let mut rpc = self.rpc.clone();
        self.unary(rpc.list(proto::ListRequest {
            all_users,
            page_size,
            page_token: page_token.to_owned(),
        }))
        .await
    }

    /// Deletes the finished job `id`: its record and output, for good.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION
    /// while the job runs), [`ClientError::Timeout`].
    pub async fn remove(&self, id: &str) -> Result<(), ClientError> {
        let mut rpc = self.rpc.clone();
        self.unary(rpc.remove(proto::RemoveRequest { id: id.to_owned() }))
            .await?;
        Ok(())
    }

    /// Everything job `id` has written so far, as a stream of chunks. Opening
    /// the stream is bounded by the timeout; reading it is not.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED),
    /// [`ClientError::Timeout`].
    pub async fn output(&self, id: &str) -> Result<Streaming<proto::OutputChunk>, ClientError> {
        let mut rpc = self.rpc.clone();
        self.unary(rpc.output(proto::OutputRequest { id: id.to_owned() }))
            .await
    }

    /// Follows job `id` from byte 0; the last message is its final status.
    /// Opening the stream is bounded by the timeout; reading it is not.
    ///
    /// # Errors
    /// As [`Client::output`].
    pub async fn stream(&self, id: &str) -> Result<Streaming<proto::StreamEvent>, ClientError> {
        let mut rpc = self.rpc.clone();
        self.unary(rpc.stream(proto::StreamRequest { id: id.to_owned() }))
            .await
    }
}

/// The default client certificate paths for a user NAME in a certs directory,
/// as `jobs-ca client NAME` writes them.
pub fn pem_files_in(dir: &std::path::Path, name: &str) -> PemFiles {
    PemFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_are_jittered_between_half_and_all_of_the_base() {
        // Scenario: refused clients of one burst must not come back at once.
        let base = SHED_FIRST_BACKOFF;
        let waits: Vec<_> = (0..200).map(|_| jittered(base)).collect();
        assert!(
            waits.iter().all(|w| *w >= base / 2 && *w <= base),
            "{waits:?}"
        );
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 100,
            "not random: {} distinct",
            distinct.len()
        );
    }
}
