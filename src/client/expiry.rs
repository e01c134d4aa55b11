//! A warning ahead of a certificate's expiry.
//!
//! This module decides whether a certificate is close enough to its end to
//! warn about, and words the warning. It must not refuse anything: a
//! certificate that is expired, not yet valid or unreadable is refused, with
//! its own message, when the TLS configuration is built (see [`crate::tls`]),
//! so here such a file simply yields no warning.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::tls::{human, rfc3339};

/// How long before its expiry a certificate starts being warned about: 14
/// days. Renewal goes through a person (the CA admin signs a request), so the
/// warning must come early enough to span a holiday or a busy fortnight, yet
/// late enough that it is news rather than noise people learn to ignore.
pub const EXPIRY_WARNING: time::Duration = time::Duration::days(14);

/// A certificate that expires within [`EXPIRY_WARNING`] and has not expired
/// yet. Its `Display` is one line saying when, and how a user renews it;
/// [`ExpiryWarning::server_text`] says how an operator replaces the server's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryWarning {
    /// The certificate file, as given.
    pub path: PathBuf,
    /// The last instant the certificate is valid (whole seconds, UTC).
    pub not_after: OffsetDateTime,
    /// Time from "now" to `not_after`; between zero and [`EXPIRY_WARNING`],
    /// both included.
    pub remaining: time::Duration,
}

impl ExpiryWarning {
    /// "certificate PATH expires in 3 days (not valid after RFC 3339 time)".
    fn when(&self) -> String {
        format!(
            "certificate {} expires in {} (not valid after {})",
            self.path.display(),
            human(self.remaining),
            rfc3339(self.not_after)
        )
    }

    /// The warning for the server's own certificate, as `jobsd` logs it: the
    /// server's key identifies no user, so renewing is making a new one.
    pub fn server_text(&self) -> String {
        format!(
            "server {}; before then, move server.crt and server.key aside, run `jobs-ca server` \
             again (with the same --san names) and restart jobsd",
            self.when()
        )
    }
}

/// The warning for a user's certificate, as `jobs` prints it.
impl fmt::Display for ExpiryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; ask your CA admin to renew it before then \
             (jobs-ca request NAME --renew, then jobs-ca sign)",
            self.when()
        )
    }
}

/// Checks the first certificate in the PEM file `path` against `now`: a
/// warning when it expires within [`EXPIRY_WARNING`] of `now` (`not_after -
/// now <= 14 days`) and has not expired yet (`now <= not_after`, as X.509
/// validity is inclusive).
///
/// `None` otherwise, including when the file cannot be read or holds no
/// parsable certificate: building the TLS configuration reports those
/// properly, and a warning must never stand in the way of that error.
pub fn expiry_warning(path: &Path, now: OffsetDateTime) -> Option<ExpiryWarning> {
    let pem = crate::bounded::read_bounded(path, crate::tls::MAX_PEM_BYTES).ok()?;
    let der = CertificateDer::from_pem_slice(&pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let not_after = cert.validity().not_after.to_datetime();
    let remaining = not_after - now;
    (remaining >= time::Duration::ZERO && remaining <= EXPIRY_WARNING).then(|| ExpiryWarning {
        path: path.to_owned(),
        not_after,
        remaining,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::ca::{CertAuthority, Validity};

    fn at(rfc3339: &str) -> OffsetDateTime {
        OffsetDateTime::parse(rfc3339, &Rfc3339).unwrap()
    }

    /// The end of the test certificate's validity. Fixed, like every `now`
    /// below, so that the tests read the same on any day.
    static NOT_AFTER: LazyLock<OffsetDateTime> = LazyLock::new(|| at("2030-06-15T12:00:00Z"));

    /// One client certificate (PEM) valid until [`NOT_AFTER`]; a CA and a
    /// leaf cost two RSA-4096 keys, so the tests share it and vary `now`.
    static CERT_PEM: LazyLock<String> = LazyLock::new(|| {
        let ca = CertAuthority::generate(Validity {
            not_before: at("2030-01-01T00:00:00Z"),
            not_after: at("2031-01-01T00:00:00Z"),
        })
        .unwrap();
        let leaf = Validity {
            not_before: at("2030-05-01T00:00:00Z"),
            not_after: *NOT_AFTER,
        };
        ca.issue_client("x", leaf).unwrap().cert_pem
    });

    /// A scratch dir holding `x.crt`, with the test certificate.
    fn cert_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.crt");
        std::fs::write(&path, CERT_PEM.as_bytes()).unwrap();
        (dir, path)
    }

    #[test]
    fn exactly_14_days_left_warns() {
        // Scenario: the first instant of the window is inside it.
        let (_dir, path) = cert_file();
        let now = *NOT_AFTER - EXPIRY_WARNING;
        assert_eq!(
            expiry_warning(&path, now),
            Some(ExpiryWarning {
                path: path.clone(),
                not_after: *NOT_AFTER,
                remaining: time::Duration::days(14),
            })
        );
    }

    #[test]
    fn one_second_more_than_14_days_left_is_quiet() {
        // Scenario: a certificate just outside the window gets no warning.
        let (_dir, path) = cert_file();
        let now = *NOT_AFTER - EXPIRY_WARNING - time::Duration::SECOND;
        assert_eq!(expiry_warning(&path, now), None);
    }

    #[test]
    fn one_second_left_warns() {
        // Scenario: the last second of validity still warns (and connects).
        let (_dir, path) = cert_file();
        let now = *NOT_AFTER - time::Duration::SECOND;
        let warning = expiry_warning(&path, now).unwrap();
        assert_eq!(warning.remaining, time::Duration::SECOND);
    }

    #[test]
    fn expired_is_left_to_the_tls_check() {
        // Scenario: one second past not_after, connecting refuses the
        // certificate with its own message; no warning on top.
        let (_dir, path) = cert_file();
        let now = *NOT_AFTER + time::Duration::SECOND;
        assert_eq!(expiry_warning(&path, now), None);
    }

    #[test]
    fn unreadable_or_unparsable_files_are_left_to_the_tls_check() {
        // Scenario: a missing file or one without a certificate yields no
        // warning; connecting reports it.
        let (dir, _path) = cert_file();
        let missing = dir.path().join("missing.crt");
        assert_eq!(expiry_warning(&missing, *NOT_AFTER), None);
        let garbage = dir.path().join("garbage.crt");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        assert_eq!(expiry_warning(&garbage, *NOT_AFTER), None);
    }

    #[test]
    fn display_says_when_and_how_to_renew() {
        // Scenario: the text a user sees three days before expiry.
        let (_dir, path) = cert_file();
        let now = *NOT_AFTER - time::Duration::days(3);
        let warning = expiry_warning(&path, now).unwrap();
        assert_eq!(
            warning.to_string(),
            format!(
                "certificate {} expires in 3 days (not valid after 2030-06-15T12:00:00Z); \
                 ask your CA admin to renew it before then \
                 (jobs-ca request NAME --renew, then jobs-ca sign)",
                path.display()
            )
        );
        assert_eq!(
            warning.server_text(),
            format!(
                "server certificate {} expires in 3 days (not valid after 2030-06-15T12:00:00Z); \
                 before then, move server.crt and server.key aside, run `jobs-ca server` again \
                 (with the same --san names) and restart jobsd",
                path.display()
            )
        );
    }
}
