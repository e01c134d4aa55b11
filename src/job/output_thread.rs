//! The thread every job's supervisor runs on, and the few threads it may
//! hand blocking work to.
//!
//! A supervisor reads its job's pipes and appends to its log on the thread
//! that runs it: a buffered write cannot be asked not to wait (ext4 refuses
//! `RWF_NOWAIT` for it), and handing each chunk to another thread cost a
//! followed job a third of its throughput on the 2-core machine. Here those
//! writes hold this thread, never a worker of the runtime that answers
//! requests, so a stalled output disk stalls output capture and nothing
//! else.
//!
//! The supervisors' blocking work (store calls, the log's flush, a group's
//! kill and removal, closing an inotify watch) goes to this runtime's own
//! blocking pool, which is bounded and lets idle threads go quickly:
//! jobsd's threads count against the same process limit as its jobs (a
//! systemd `TasksMax`, a pids cgroup), and a second pool that kept threads
//! for tokio's default 10 s after a burst of ends refused the next start
//! there.

use std::time::Duration;

/// Threads the supervisors' blocking work may use at once. Ends need them
/// most: each kills, reaps and removes its groups off the worker. 1,000
/// jobs stopped at once (`cargo bench --bench scale`) took 6.9 s with 2,
/// 4.2 s with 4, 3.3 s with 8; the store is one connection behind a lock,
/// so its calls gain nothing from more.
const BLOCKING_THREADS: usize = 8;

/// How long an idle blocking thread is kept for the next call.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// A runtime with one worker, `jobs-output`, and a pool of at most
/// [`BLOCKING_THREADS`] (`jobs-output-io`).
pub(super) struct OutputThread(Option<tokio::runtime::Runtime>);

impl OutputThread {
    pub(super) fn start() -> std::io::Result<Self> {
        let workers_started = std::sync::atomic::AtomicBool::new(false);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_keep_alive(KEEP_ALIVE)
            // The worker is the first thread the runtime starts; every
            // later one is a blocking thread.
            .thread_name_fn(move || {
                if workers_started.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    "jobs-output-io".to_owned()
                } else {
                    "jobs-output".to_owned()
                }
            })
            .enable_all()
            .build()
            .map(|runtime| Self(Some(runtime)))
    }

    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }
}

impl Drop for OutputThread {
    fn drop(&mut self) {
        // After `Jobs::shutdown` no supervisor is left; without it (a
        // dropped server) they are dropped with their runtime, as they would
        // be with the caller's. Does not wait: it may run on a runtime thread.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
