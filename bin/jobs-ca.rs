//! `jobs-ca`: make the CA, server and user certificates for `jobs`; make and
//! sign certificate requests; list what a CA issued.
//!
//! A thin front end over [`jobs::ca`]: parse the arguments, call the library,
//! print the result. Exit status: 0 on success, 1 on error (the cause chain goes
//! to stderr), 2 on a usage error.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jobs::ca::{self, CaError, IssuedFiles, San, Validity};

#[derive(Parser)]
#[command(
    name = "jobs-ca",
    version,
    about = "Issue the CA, server and user certificates for jobs (all keys RSA-4096).",
    long_about = "Issue the CA, server and user certificates for jobs (all keys RSA-4096).\n\n\
        Certificates (.crt, mode 0644) and private keys (.key, mode 0600) are PEM files in one \
        CA directory. Existing files are never overwritten. A user is identified by the \
        fingerprint of their certificate's public key, printed as sha256:<64 hex digits>."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new CA: write DIR/ca.crt and DIR/ca.key, print the CA's fingerprint.
    Init {
        /// CA directory; created with mode 0700 if missing.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// How long the CA certificate is valid, in days (1..=3650).
        #[arg(long, value_name = "N", default_value_t = 3650)]
        days: u32,
    },
    /// Issue the server certificate: write DIR/server.crt and DIR/server.key,
    /// print its fingerprint.
    Server {
        /// CA directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// A DNS name or IP address clients will dial; repeat for several.
        /// [default: localhost, 127.0.0.1, ::1]
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        /// How long the certificate is valid, in days (1..=3650, and not past the CA's expiry).
        #[arg(long, value_name = "N", default_value_t = 825)]
        days: u32,
    },
    /// Issue user certificates with keys made here: write DIR/NAME.crt and
    /// DIR/NAME.key for each NAME (keys made in parallel on all cores). Prints
    /// the fingerprint (the identity the server knows the user by) alone on
    /// stdout for one NAME, or "FINGERPRINT NAME" lines, in order, for several.
    Client {
        /// The users' names: 1-64 of A-Z a-z 0-9 . _ -, not starting with . or -,
        /// not "ca" or "server". Each becomes a certificate's common name and file names.
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        /// CA directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// How long the certificate is valid, in days (1..=3650, and not past the CA's expiry).
        #[arg(long, value_name = "N", default_value_t = 365)]
        days: u32,
    },
    /// User side: make a private key DIR/NAME.key (RSA-4096, mode 0600) and a
    /// certificate request DIR/NAME.csr for the CA admin; print the fingerprint
    /// the certificate will have. The key never leaves this machine.
    Request {
        /// Your user name (rules as for `client`): the request's common name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write the key and request; created with mode 0700 if missing.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Renewal: reuse the existing DIR/NAME.key (same key, same identity and
        /// jobs) and write a new DIR/NAME.csr.
        #[arg(long)]
        renew: bool,
    },
    /// Admin side: sign a certificate request (PKCS#10 PEM) as a user
    /// certificate, after checking its signature and key (RSA, 4096-8192 bits).
    /// Only its public key and name are used. Re-signing a key for the same
    /// name renews it (same fingerprint); a key already issued under another
    /// name is refused. Prints the fingerprint alone on stdout.
    Sign {
        /// The request file, e.g. alice.csr.
        #[arg(value_name = "REQUEST")]
        request: PathBuf,
        /// CA directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// The user's name [default: the request's common name].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// How long the certificate is valid, in days (1..=3650, and not past the CA's expiry).
        #[arg(long, value_name = "N", default_value_t = 365)]
        days: u32,
        /// Where to write the certificate [default: REQUEST with the extension .crt].
        /// An existing file is replaced only by a renewal of the same key.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the certificates a CA issued (from DIR/issued.json): name, kind,
    /// serial, expiry, days left, status and fingerprint, in issue order.
    List {
        /// CA directory.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// One JSON array of objects instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every certificate of one identity and write DIR/crl.pem, the CA's
    /// signed certificate revocation list for `jobsd --crl`.
    ///
    /// TARGET is a client name, a fingerprint (sha256:<64 hex>) or a serial as
    /// `jobs-ca list` shows it; every certificate with that key is revoked, and
    /// the key never gets a certificate again. The CA's own and the server's
    /// certificate cannot be revoked this way.
    Revoke {
        /// NAME, sha256:FINGERPRINT or SERIAL.
        #[arg(value_name = "TARGET")]
        target: String,
        /// CA directory.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// Why (an RFC 5280 reason code), recorded in the record and the CRL.
        #[arg(long, value_name = "R", value_enum, default_value_t = Reason::Unspecified)]
        reason: Reason,
        /// How long the CRL is valid, in days (1..=366); re-sign it with
        /// `jobs-ca crl` before then, or jobsd refuses it at its next reload.
        #[arg(long, value_name = "N", default_value_t = ca::DEFAULT_CRL_DAYS)]
        crl_days: u32,
    },
    /// Re-sign DIR/crl.pem from the record: a new CRL number and new dates. Run
    /// it before the current CRL's next update (e.g. from cron), then let jobsd
    /// reload it (it watches the file).
    Crl {
        /// CA directory.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// How long the CRL is valid, in days (1..=366).
        #[arg(long, value_name = "N", default_value_t = ca::DEFAULT_CRL_DAYS)]
        crl_days: u32,
    },
    /// Print the fingerprint (sha256:<64 hex>) of a PEM certificate: the SHA-256
    /// of its DER SubjectPublicKeyInfo.
    Fingerprint {
        /// PEM certificate file.
        #[arg(value_name = "CERT")]
        cert: PathBuf,
    },
}

/// RFC 5280 §5.3.1 reason codes, under their RFC names.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Reason {
    #[value(name = "unspecified")]
    Unspecified,
    #[value(name = "keyCompromise")]
    KeyCompromise,
    #[value(name = "cACompromise")]
    CaCompromise,
    #[value(name = "affiliationChanged")]
    AffiliationChanged,
    #[value(name = "superseded")]
    Superseded,
    #[value(name = "cessationOfOperation")]
    CessationOfOperation,
    #[value(name = "privilegeWithdrawn")]
    PrivilegeWithdrawn,
    #[value(name = "aACompromise")]
    AaCompromise,
}

impl From<Reason> for ca::registry::RevocationReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Unspecified => Self::Unspecified,
            Reason::KeyCompromise => Self::KeyCompromise,
            Reason::CaCompromise => Self::CaCompromise,
            Reason::AffiliationChanged => Self::AffiliationChanged,
            Reason::Superseded => Self::Superseded,
            Reason::CessationOfOperation => Self::CessationOfOperation,
            Reason::PrivilegeWithdrawn => Self::PrivilegeWithdrawn,
            Reason::AaCompromise => Self::AaCompromise,
        }
    }
}

/// `eprintln!` with control characters escaped: file names and request
/// contents come from users, and must not reach the admin's terminal as
/// escape sequences (retitling it, erasing lines, faking output).
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("{}", printable(&format!($($arg)*)))
    };
}

/// `text` with every control character shown as a `\u{..}` escape.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`jobs-ca client alice | head -c0`) is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            note!("jobs-ca: error: {e}");
            for cause in e.chain().skip(1) {
                note!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    // Settle what a killed run left in the CA directory, and say what was done.
    match &command {
        Command::Server { dir, .. }
        | Command::Client { dir, .. }
        | Command::Sign { dir, .. }
        | Command::Revoke { dir, .. }
        | Command::Crl { dir, .. }
        | Command::List { dir, .. } => {
            if dir.join(ca::CA_CERT_FILE).exists() {
                let repairs = ca::recover(dir)
                    .with_context(|| format!("opening the CA's record in {}", dir.display()))?;
                report_repairs(&repairs, dir);
            }
        }
        Command::Init { .. } | Command::Request { .. } | Command::Fingerprint { .. } => {}
    }
    match command {
        Command::Init { dir, days } => {
            let validity = Validity::days(days).context("invalid --days")?;
            let files = ca::init_dir(&dir, validity)
                .with_context(|| format!("creating a CA in {}", dir.display()))?;
            report(
                &files,
                "CA certificate; give it to the server and to every user",
            )?;
        }
        Command::Server { dir, sans, days } => {
            let sans = if sans.is_empty() {
                ca::default_server_sans()
            } else {
                sans.iter()
                    .map(|s| s.parse::<San>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("invalid --san")?
            };
            let validity = Validity::days(days).context("invalid --days")?;
            let files = ca::write_server(&dir, &sans, validity)
                .map_err(|e| with_init_hint(e, &dir))
                .with_context(|| {
                    format!(
                        "issuing the server certificate from the CA in {}",
                        dir.display()
                    )
                })?;
            let names: Vec<String> = sans.iter().map(San::to_string).collect();
            report(
                &files,
                &format!("server certificate for {}", names.join(", ")),
            )?;
        }
        Command::Client { names, dir, days } => {
            let validity = Validity::days(days).context("invalid --days")?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let all = ca::write_clients(&dir, &names, validity)
                .map_err(|e| with_init_hint(e, &dir))
                .with_context(|| {
                    format!(
                        "issuing certificates for {} from the CA in {}",
                        names.join(", "),
                        dir.display()
                    )
                })?;
            if let [files] = all.as_slice() {
                report(
                    files,
                    &format!("user certificate, CN={}", files.record.name),
                )?;
            } else {
                let mut out = io::stdout().lock();
                for files in &all {
                    report_paths(
                        files,
                        &format!("user certificate, CN={}", files.record.name),
                    );
                    writeln!(out, "{} {}", files.identity, files.record.name)?;
                }
            }
        }
        Command::Request { name, dir, renew } => {
            let files = ca::request_files(&dir, &name, renew)
                .map_err(|e| {
                    let key_exists = !renew
                        && matches!(&e, CaError::AlreadyExists { path } if path.extension().is_some_and(|x| x == "key"));
                    let e = anyhow::Error::new(e);
                    if key_exists {
                        e.context(format!(
                            "you already have a key for {name:?}; to renew its certificate, \
                             `jobs-ca request {name} --dir {} --renew` makes a new request for it",
                            dir.display()
                        ))
                    } else {
                        e
                    }
                })
                .with_context(|| {
                if renew {
                    format!("making a renewal request for {name:?} in {}", dir.display())
                } else {
                    format!("making a key and request for {name:?} in {}", dir.display())
                }
            })?;
            if files.renewal {
                note!(
                    "reused {} (your existing key: the renewed certificate keeps your identity)",
                    files.key_path.display()
                );
            } else {
                note!(
                    "wrote {} (private key, mode 0600: keep it secret, never send or commit it)",
                    files.key_path.display()
                );
            }
            note!(
                "wrote {} (certificate request: send it to your CA admin, who runs `jobs-ca sign {}`)",
                files.csr_path.display(),
                files
                    .csr_path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            );
            writeln!(io::stdout(), "{}", files.identity)?;
        }
        Command::Sign {
            request,
            dir,
            name,
            days,
            out,
        } => {
            let validity = Validity::days(days).context("invalid --days")?;
            let signed =
                ca::sign_request_file(&dir, &request, name.as_deref(), validity, out.as_deref())
                    .map_err(|e| {
                        if name.is_none() && matches!(e, CaError::InvalidClientName { .. }) {
                            anyhow::Error::new(e).context(
                                "the request's common name cannot be a user name; \
                                 give one with --name NAME",
                            )
                        } else {
                            with_init_hint(e, &dir)
                        }
                    })
                    .with_context(|| {
                        format!(
                            "signing {} with the CA in {}",
                            request.display(),
                            dir.display()
                        )
                    })?;
            for item in &signed.ignored {
                note!("ignored from the request (not granted): {item}");
            }
            let record = &signed.record;
            match &signed.renewed {
                Some(previous) => note!(
                    "wrote {} (renewal for {:?}: serial {}, replaces serial {}, same identity; valid until {})",
                    signed.cert_path.display(),
                    record.name,
                    record.serial,
                    previous.serial,
                    rfc3339(record.not_after)
                ),
                None => note!(
                    "wrote {} (user certificate, CN={}, serial {}, valid until {}); give it and ca.crt to the user",
                    signed.cert_path.display(),
                    record.name,
                    record.serial,
                    rfc3339(record.not_after)
                ),
            }
            writeln!(io::stdout(), "{}", record.fingerprint)?;
        }
        Command::List { dir, json } => {
            let records = ca::issued(&dir)
                .map_err(|e| with_init_hint(e, &dir))
                .with_context(|| format!("reading what the CA in {} issued", dir.display()))?;
            let listed = ca::registry::listing(&records, time::OffsetDateTime::now_utc());
            let mut out = io::stdout().lock();
            if json {
                let rows: Vec<ListedJson<'_>> = listed.iter().map(ListedJson::from).collect();
                writeln!(out, "{}", serde_json::to_string(&rows)?)?;
            } else {
                write_table(&mut out, &listed)?;
            }
        }
        Command::Revoke {
            target,
            dir,
            reason,
            crl_days,
        } => {
            let revoked = ca::revoke(&dir, &target, reason.into(), crl_days).map_err(|e| {
                match e {
                    // Already one clear line: no context on top.
                    CaError::UnknownCertificate { .. }
                    | CaError::RevokeRefused { .. }
                    | CaError::InvalidCrlDays { .. } => anyhow::Error::new(e),
                    e => with_init_hint(e, &dir).context(format!(
                        "revoking {target:?} in the CA in {}",
                        dir.display()
                    )),
                }
            })?;
            if revoked.serials.is_empty() {
                note!(
                    "{:?} ({}) was already revoked; nothing new revoked",
                    revoked.name,
                    revoked.identity
                );
            } else {
                note!(
                    "revoked {:?} ({}): serial(s) {}",
                    revoked.name,
                    revoked.identity,
                    revoked.serials.join(", ")
                );
            }
            report_crl(&revoked.crl);
            writeln!(io::stdout(), "{}", revoked.identity)?;
        }
        Command::Crl { dir, crl_days } => {
            let crl = ca::write_crl(&dir, crl_days).map_err(|e| match e {
                CaError::InvalidCrlDays { .. } => anyhow::Error::new(e),
                e => with_init_hint(e, &dir)
                    .context(format!("signing the CRL of the CA in {}", dir.display())),
            })?;
            report_crl(&crl);
        }
        Command::Fingerprint { cert } => {
            let identity = ca::fingerprint_file(&cert)?;
            writeln!(io::stdout(), "{identity}")?;
        }
    }
    Ok(())
}

/// Details of what was written go to stderr; the fingerprint alone goes to
/// stdout, so that `ID=$(jobs-ca client alice)` captures just the identity.
fn report(files: &IssuedFiles, what: &str) -> anyhow::Result<()> {
    report_paths(files, what);
    writeln!(io::stdout(), "{}", files.identity)?;
    Ok(())
}

fn report_crl(crl: &ca::CrlInfo) {
    note!(
        "wrote {} (CRL number {}, {} revoked certificate(s), next update {}: run `jobs-ca crl` before then)",
        crl.path.display(),
        crl.number,
        crl.revoked,
        rfc3339(crl.next_update)
    );
}

fn report_repairs(repairs: &ca::registry::Repairs, dir: &Path) {
    if let Some(n) = repairs.rebuilt_from {
        note!(
            "note: {} was missing; rebuilt it from the {n} certificates this CA signed \
             (ca.crt, the certificates in {} and the CA's copies in its issued/ directory)",
            dir.join(ca::registry::REGISTRY_FILE).display(),
            dir.display()
        );
    }
    for record in &repairs.completed {
        note!(
            "note: an interrupted jobs-ca run had written the certificate for {:?} (serial {}): now recorded",
            record.name,
            record.serial
        );
    }
    for record in &repairs.dropped {
        note!(
            "note: an interrupted jobs-ca run never wrote the certificate for {:?} (serial {}): dropped from the record",
            record.name,
            record.serial
        );
    }
    if repairs.temp_files_removed > 0 {
        note!(
            "note: removed {} temporary file(s) an interrupted jobs-ca run left in {}",
            repairs.temp_files_removed,
            dir.display()
        );
    }
}

fn report_paths(files: &IssuedFiles, what: &str) {
    note!("wrote {} ({what})", files.cert_path.display());
    note!(
        "wrote {} (private key, mode 0600: keep it secret, never commit it)",
        files.key_path.display()
    );
}

/// One row of `jobs-ca list --json`.
#[derive(serde::Serialize)]
struct ListedJson<'a> {
    name: &'a str,
    kind: &'static str,
    serial: &'a str,
    fingerprint: String,
    not_before: String,
    not_after: String,
    issued_at: String,
    days_left: i64,
    status: ca::registry::CertStatus,
    /// When it was revoked; absent unless revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// Why (RFC 5280 name); absent unless revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revocation_reason: Option<&'static str>,
}

impl<'a> From<&'a ca::registry::Listed> for ListedJson<'a> {
    fn from(listed: &'a ca::registry::Listed) -> Self {
        let r = &listed.record;
        Self {
            name: &r.name,
            kind: r.kind.as_str(),
            serial: &r.serial,
            fingerprint: r.fingerprint.to_string(),
            not_before: rfc3339(r.not_before),
            not_after: rfc3339(r.not_after),
            issued_at: rfc3339(r.issued_at),
            days_left: listed.days_left,
            status: listed.status,
            revoked_at: r.revoked.map(|rev| rfc3339(rev.at)),
            revocation_reason: r.revoked.map(|rev| rev.reason.as_str()),
        }
    }
}

/// The text form of `jobs-ca list`: a header and one aligned row per
/// certificate; days left is "-" once expired.
fn write_table(out: &mut impl Write, listed: &[ca::registry::Listed]) -> io::Result<()> {
    let rows: Vec<[String; 7]> = listed
        .iter()
        .map(|l| {
            let r = &l.record;
            [
                r.name.clone(),
                r.kind.as_str().to_owned(),
                r.serial.clone(),
                rfc3339(r.not_after),
                if l.days_left < 0 {
                    "-".to_owned()
                } else {
                    l.days_left.to_string()
                },
                status_text(l.status).to_owned(),
                r.fingerprint.to_string(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "KIND",
        "SERIAL",
        "NOT AFTER",
        "DAYS LEFT",
        "STATUS",
        "FINGERPRINT",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(())
}

fn status_text(status: ca::registry::CertStatus) -> &'static str {
    match status {
        ca::registry::CertStatus::Valid => "valid",
        ca::registry::CertStatus::NotYetValid => "not yet valid",
        ca::registry::CertStatus::Expired => "expired",
        ca::registry::CertStatus::Renewed => "renewed",
        ca::registry::CertStatus::Revoked => "revoked",
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A missing `ca.crt` most likely means the CA was never made (or `--dir`
/// points elsewhere): say so.
fn with_init_hint(e: CaError, dir: &Path) -> anyhow::Error {
    let missing_ca = matches!(
        &e,
        CaError::Read { path, source }
            if source.kind() == io::ErrorKind::NotFound && path.ends_with(ca::CA_CERT_FILE)
    );
    let e = anyhow::Error::new(e);
    if missing_ca {
        e.context(format!(
            "no CA in {}; create one with `jobs-ca init --dir {}`",
            dir.display(),
            dir.display()
        ))
    } else {
        e
    }
}

/// Only a bare `io::Error` comes from writing to stdout; file errors are
/// wrapped in [`CaError`].
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
}
