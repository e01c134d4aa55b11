//! `jobs-init`: the first process of every contained job.
//!
//! `jobsd` starts it as root with the status pipe on fd 3 and the job's
//! environment; it sets up the job's namespaces, runs the program as the job's
//! user, forwards signals, reaps orphans and reports on fd 3. Everything lives
//! in [`jobs::sandbox`]; see [`jobs::sandbox::run_init`] for the order of
//! things and the exit codes.

fn main() {
    jobs::sandbox::run_init(std::env::args_os().skip(1))
}
