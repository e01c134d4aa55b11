//! A Slurm job's output files in the spool, and following them as they grow.
//!
//! Each job gets a directory `SPOOL/<job>/` owned by the daemon (mode
//! 0711: the job's account may reach its files but not list or change the
//! directory) holding `stdout` and `stderr`, made here before the job is
//! submitted: owned by the job's account, mode 0600, so no other account
//! can read them, and opened for reading here before Slurm opens them for
//! writing. The job can neither put a link in their place (the directory is
//! not its) nor make us read anything but the files Slurm writes: the
//! descriptors are ours from the start.
//!
//! Following: each file is read from byte 0 as it grows and copied into an
//! in-process pipe the supervisor reads like a local job's. Growth is
//! noticed through inotify on the directory; a file system that does not
//! deliver events (a network file system written from another node) is
//! re-read every [`POLL`] as well. Once Slurm says the job ended, the files
//! are read to their end once more and the pipes close: that is the end of
//! the job's output.
//!
//! File reads go to tokio's blocking pool, 256 KiB at a time: a spool on a
//! network file system may stall, and must not hold a runtime worker. A
//! job holds its read buffer only while its files have bytes to copy, and
//! at most 64 KiB per pipe waits for the supervisor.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::AddWatchFlags;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use crate::inotify::Watch;
use crate::job::OutputPipe;

/// How often the files are re-read when no event came (a file system
/// without inotify events), and the longest a follower lags there.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// Bytes read from a file per trip to the blocking pool. The buffer is
/// held only while a file has bytes to copy: an idle job holds none.
const READ: usize = 256 << 10;

/// Bytes the in-process pipe to the supervisor holds at most.
const PIPE: usize = 64 << 10;

/// A job's directory in the spool, with its two files made and open.
#[derive(Debug)]
pub(super) struct JobSpool {
    pub(super) dir: PathBuf,
    pub(super) stdout: PathBuf,
    pub(super) stderr: PathBuf,
    files: [Arc<File>; 2],
}

/// Makes `spool/name/` with `stdout` and `stderr` owned by `uid`.
///
/// # Errors
/// The OS error of the step that failed, with what it was doing.
pub(super) fn create(spool: &Path, name: &str, uid: u32, gid: u32) -> io::Result<JobSpool> {
    let dir = spool.join(name);
    std::fs::DirBuilder::new().mode(0o711).create(&dir)?;
    let made = (|| {
        let mut files = Vec::with_capacity(2);
        for file in ["stdout", "stderr"] {
            let path = dir.join(file);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            nix::unistd::fchown(&f, Some(uid.into()), Some(gid.into()))?;
            files.push(Arc::new(f));
        }
        let [out, err]: [Arc<File>; 2] = files.try_into().expect("two files");
        Ok(JobSpool {
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
            dir: dir.clone(),
            files: [out, err],
        })
    })();
    if made.is_err() {
        remove(&dir);
    }
    made
}

/// Removes a job's spool directory and its files, best effort (logged).
pub(super) fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a job's spool directory");
        }
    }
}

impl JobSpool {
    /// Follows both files until `ended` turns true (or its sender goes) and
    /// both are read to their end: the job's stdout and stderr, and the
    /// task that copies them (its error is the first file that failed).
    /// Each file is copied up to `limit` bytes (the job's output quota:
    /// the engine would discard the rest), so a job that leaves a huge
    /// (sparse) file behind costs no more than its quota to read.
    pub(super) fn follow(
        &self,
        ended: watch::Receiver<bool>,
        limit: Option<u64>,
    ) -> (
        OutputPipe,
        OutputPipe,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let (out_r, out_w) = tokio::io::duplex(PIPE);
        let (err_r, err_w) = tokio::io::duplex(PIPE);
        let tails = [
            Tail::new(self.files[0].clone(), self.stdout.clone(), out_w, limit),
            Tail::new(self.files[1].clone(), self.stderr.clone(), err_w, limit),
        ];
        let task = tokio::spawn(copy(self.dir.clone(), tails, ended));
        (Box::pin(out_r), Box::pin(err_r), task)
    }
}

/// One file being followed into its pipe.
struct Tail {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    to: Option<DuplexStream>,
    buf: Option<Box<[u8]>>,
    /// Bytes copied at most.
    limit: Option<u64>,
}

impl Tail {
    fn new(file: Arc<File>, path: PathBuf, to: DuplexStream, limit: Option<u64>) -> Self {
        Self {
            file,
            path,
            offset: 0,
            to: Some(to),
            buf: None,
            limit,
        }
    }

    /// Copies what the file holds past `offset` into the pipe. A reader
    /// that went away (the supervisor dropped the pipe) ends the copy.
    async fn drain(&mut self) -> io::Result<()> {
        loop {
            if self.to.is_none() {
                return Ok(());
            }
            let want = match self.limit {
                Some(limit) if self.offset >= limit => {
                    // The quota is reached: the rest is the engine's to
                    // discard, so it is not read at all.
                    self.close().await;
                    return Ok(());
                }
                Some(limit) => (limit - self.offset).min(READ as u64) as usize,
                None => READ,
            };
            let file = self.file.clone();
            let mut buf = self
                .buf
                .take()
                .unwrap_or_else(|| vec![0; READ].into_boxed_slice());
            let offset = self.offset;
            let path = self.path.clone();
            let (buf, read) = tokio::task::spawn_blocking(move || {
                // The check stats the files: off the runtime, like the read.
                let n = check(&file, &path).and_then(|()| file.read_at(&mut buf[..want], offset));
                (buf, n)
            })
            .await
            .map_err(io::Error::other)?;
            let n = read?;
            if n == 0 {
                // At the end for now: the buffer goes until there is more.
                return Ok(());
            }
            let Some(to) = self.to.as_mut() else {
                return Ok(());
            };
            if to.write_all(&buf[..n]).await.is_err() {
                self.to = None;
            }
            self.offset += n as u64;
            self.buf = Some(buf);
        }
    }

    async fn close(&mut self) {
        if let Some(mut to) = self.to.take() {
            let _ = to.shutdown().await;
        }
    }
}

/// Errors when `path` no longer names `file`: it was removed or replaced
/// behind our back, so what Slurm writes next may never reach us.
fn check(file: &File, path: &Path) -> io::Result<()> {
    let ours = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(there) if there.ino() == ours.ino() && there.dev() == ours.dev() => Ok(()),
        Ok(_) => Err(io::Error::other(format!("{} was replaced", path.display()))),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{} vanished", path.display()),
        )),
    }
}

/// The copying task of one job.
async fn copy(
    dir: PathBuf,
    mut tails: [Tail; 2],
    mut ended: watch::Receiver<bool>,
) -> io::Result<()> {
    let watch = match Watch::new(
        &dir,
        AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE,
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a Slurm job's spool directory; re-reading it every second instead");
            None
        }
    };
    let result = async {
        loop {
            // Read the flag before the files: what was written before the
            // end is then in them.
            let done = *ended.borrow_and_update();
            for tail in &mut tails {
                tail.drain().await?;
            }
            if done {
                return Ok(());
            }
            tokio::select! {
                changed = async {
                    match &watch {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => changed?,
                // The job's process handle went away: nothing more will say
                // the job ended; read once more and stop.
                gone = ended.changed() => if gone.is_err() {
                    for tail in &mut tails {
                        tail.drain().await?;
                    }
                    return Ok(());
                },
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
    .await;
    for tail in &mut tails {
        tail.close().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn me() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    async fn read_all(mut pipe: OutputPipe) -> Vec<u8> {
        let mut v = Vec::new();
        pipe.read_to_end(&mut v).await.unwrap();
        v
    }

    // Scenario: a job writes its files in pieces while followed; its end is
    // said while the last piece is still unread. Both pipes get every byte
    // in order, apart, and then end.
    #[tokio::test]
    async fn both_files_are_followed_to_their_end_after_the_job_ended() {
        let spool = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let job = create(spool.path(), "j1", uid, gid).unwrap();
        let (ended_tx, ended) = watch::channel(false);
        let (out, err, task) = job.follow(ended, None);
        let out = tokio::spawn(read_all(out));
        let err = tokio::spawn(read_all(err));
        let mut w_out = std::fs::OpenOptions::new()
            .append(true)
            .open(&job.stdout)
            .unwrap();
        let mut w_err = std::fs::OpenOptions::new()
            .append(true)
            .open(&job.stderr)
            .unwrap();
        let mut expect = Vec::new();
        for i in 0..50u32 {
            let piece: Vec<u8> = (0..(i * 997 % 70_000)).map(|b| (b ^ i) as u8).collect();
            std::io::Write::write_all(&mut w_out, &piece).unwrap();
            expect.extend_from_slice(&piece);
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        std::io::Write::write_all(&mut w_err, b"on stderr\n").unwrap();
        ended_tx.send(true).unwrap();
        task.await.unwrap().unwrap();
        assert!(out.await.unwrap() == expect, "stdout differs");
        assert_eq!(err.await.unwrap(), b"on stderr\n");
    }

    // Scenario: a job leaves a file far larger than its output quota (a
    // sparse one costs it nothing). Only the quota's bytes are read; the
    // other file is copied whole.
    #[tokio::test]
    async fn a_file_is_copied_up_to_the_quota_only() {
        let spool = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let job = create(spool.path(), "j4", uid, gid).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&job.stdout)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        std::fs::write(&job.stderr, b"end").unwrap();
        let (ended_tx, ended) = watch::channel(true);
        let (out, err, task) = job.follow(ended, Some(1000));
        let (out, err) = tokio::join!(read_all(out), read_all(err));
        task.await.unwrap().unwrap();
        drop(ended_tx);
        assert_eq!((out, err), (vec![0u8; 1000], b"end".to_vec()));
    }

    // Scenario: the files are made for the job's account only, in a
    // directory the job cannot change.
    #[tokio::test]
    async fn the_files_are_the_accounts_alone_in_a_directory_it_cannot_change() {
        let spool = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let job = create(spool.path(), "j2", uid, gid).unwrap();
        let dir = std::fs::metadata(&job.dir).unwrap();
        assert_eq!(dir.mode() & 0o7777, 0o711);
        for f in [&job.stdout, &job.stderr] {
            let m = std::fs::symlink_metadata(f).unwrap();
            assert!(m.is_file());
            assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, uid, gid));
        }
        // A second job of the same name is refused and leaves the first.
        assert_eq!(
            create(spool.path(), "j2", uid, gid).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(job.stdout.exists());
        remove(&job.dir);
        assert!(!job.dir.exists());
    }

    // Scenario: a spool file is removed while the job runs. The follow
    // fails, naming the file, instead of waiting for bytes that will never
    // come.
    #[tokio::test]
    async fn a_vanished_file_fails_the_follow_naming_it() {
        let spool = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let job = create(spool.path(), "j3", uid, gid).unwrap();
        let (_ended_tx, ended) = watch::channel(false);
        let (out, err, task) = job.follow(ended, None);
        std::fs::remove_file(&job.stderr).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("noticed within 10 s")
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().ends_with("stderr vanished"), "{e}");
        assert_eq!(read_all(out).await, b"");
        assert_eq!(read_all(err).await, b"");
    }
}
