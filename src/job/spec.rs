//! What a start request asks for, validated before anything runs.

use super::JobError;

/// Longest program name or path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PROGRAM_LEN: usize = 4096;
/// Most arguments accepted (argv[1..]).
pub const MAX_ARGS: usize = 4096;
/// Most bytes of program plus arguments accepted. Linux allows ~2 MiB of argv
/// and environment together (`ARG_MAX`, execve(2)); 1 MiB leaves room and keeps
/// one request small.
pub const MAX_ARGV_BYTES: usize = 1024 * 1024;

/// A program and its arguments, checked for shape (not for existence: that is
/// the executor's job, see [`super::Executor`]).
///
/// The program is either an absolute path or a bare name to look up in the
/// executor's fixed PATH. A relative path containing `/` is refused: it would
/// resolve against the daemon's working directory, which means nothing to the
/// caller. The program is never split on whitespace and no shell runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    program: String,
    args: Vec<String>,
}

impl JobSpec {
    /// Validates `program` and `args`.
    ///
    /// # Errors
    /// [`JobError::EmptyProgram`], [`JobError::NulByte`],
    /// [`JobError::ProgramTooLong`], [`JobError::RelativeProgram`],
    /// [`JobError::TooManyArgs`], [`JobError::ArgvTooLarge`].
    pub fn new(program: String, args: Vec<String>) -> Result<Self, JobError> {
        if program.is_empty() {
            return Err(JobError::EmptyProgram);
        }
        if program.len() > MAX_PROGRAM_LEN {
            return Err(JobError::ProgramTooLong {
                max: MAX_PROGRAM_LEN,
            });
        }
        if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(JobError::NulByte);
        }
        if program.contains('/') && !program.starts_with('/') {
            return Err(JobError::RelativeProgram { program });
        }
        if args.len() > MAX_ARGS {
            return Err(JobError::TooManyArgs { max: MAX_ARGS });
        }
        let total: usize = program.len() + args.iter().map(|a| a.len() + 1).sum::<usize>();
        if total > MAX_ARGV_BYTES {
            return Err(JobError::ArgvTooLarge {
                max: MAX_ARGV_BYTES,
            });
        }
        Ok(Self { program, args })
    }

    /// The program as given: an absolute path or a bare name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments (argv[1..]).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The program followed by its arguments.
    pub fn command(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(p: &str, a: &[&str]) -> Result<JobSpec, JobError> {
        JobSpec::new(p.into(), a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn arguments_are_kept_verbatim() {
        let s = spec("echo", &["a b", "c;d", "$HOME", "*", ""]).unwrap();
        assert_eq!(s.command(), ["echo", "a b", "c;d", "$HOME", "*", ""]);
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(matches!(spec("", &[]), Err(JobError::EmptyProgram)));
        assert!(matches!(spec("ec\0ho", &[]), Err(JobError::NulByte)));
        assert!(matches!(spec("echo", &["a\0"]), Err(JobError::NulByte)));
        assert!(matches!(
            spec("./run.sh", &[]),
            Err(JobError::RelativeProgram { .. })
        ));
        assert!(matches!(
            spec("bin/true", &[]),
            Err(JobError::RelativeProgram { .. })
        ));
        let many: Vec<&str> = vec!["x"; MAX_ARGS + 1];
        assert!(matches!(
            spec("echo", &many),
            Err(JobError::TooManyArgs { max: MAX_ARGS })
        ));
        let big = "x".repeat(MAX_ARGV_BYTES);
        assert!(matches!(
            spec("echo", &[&big]),
            Err(JobError::ArgvTooLarge { .. })
        ));
        let long = format!("/{}", "x".repeat(MAX_PROGRAM_LEN));
        assert!(matches!(
            spec(&long, &[]),
            Err(JobError::ProgramTooLong { .. })
        ));
    }

    #[test]
    fn a_quoted_command_line_is_one_program_name() {
        // Scenario (C29): `jobs start "sleep 100"` names a program with a space.
        assert_eq!(spec("sleep 100", &[]).unwrap().program(), "sleep 100");
    }
}
