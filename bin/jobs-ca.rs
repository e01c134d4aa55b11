//! `jobs-ca`: make the CA, server and user certificates for `jobs`.
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
    /// Issue a user certificate: write DIR/NAME.crt and DIR/NAME.key, print the
    /// user's fingerprint (the identity the server knows them by) alone on stdout.
    Client {
        /// The user's name: 1-64 of A-Z a-z 0-9 . _ -, not starting with . or -,
        /// not "ca" or "server". Becomes the certificate's common name and the file names.
        #[arg(value_name = "NAME")]
        name: String,
        /// CA directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// How long the certificate is valid, in days (1..=3650, and not past the CA's expiry).
        #[arg(long, value_name = "N", default_value_t = 365)]
        days: u32,
    },
    /// Print the fingerprint (sha256:<64 hex>) of a PEM certificate: the SHA-256
    /// of its DER SubjectPublicKeyInfo.
    Fingerprint {
        /// PEM certificate file.
        #[arg(value_name = "CERT")]
        cert: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`jobs-ca client alice | head -c0`) is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobs-ca: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
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
        Command::Client { name, dir, days } => {
            let validity = Validity::days(days).context("invalid --days")?;
            let files = ca::write_client(&dir, &name, validity)
                .map_err(|e| with_init_hint(e, &dir))
                .with_context(|| {
                    format!(
                        "issuing a certificate for {name:?} from the CA in {}",
                        dir.display()
                    )
                })?;
            report(&files, &format!("user certificate, CN={name}"))?;
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
    eprintln!("wrote {} ({what})", files.cert_path.display());
    eprintln!(
        "wrote {} (private key, mode 0600: keep it secret, never commit it)",
        files.key_path.display()
    );
    writeln!(io::stdout(), "{}", files.identity)?;
    Ok(())
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
