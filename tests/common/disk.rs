//! Disks that stall on purpose (root only): a small ext4 file system on a
//! loop device, and `fsfreeze` on it with a watchdog, for tests that show a
//! stalled disk holds back only what waits for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A 16 MiB ext4 file system on a loop device, mounted at `at` for as long
/// as this lives (root only).
pub struct LoopExt4 {
    pub at: PathBuf,
}

impl LoopExt4 {
    pub fn mount(dir: &Path) -> Self {
        let image = dir.join("fs.img");
        let at = dir.join("fs");
        std::fs::create_dir(&at).unwrap();
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(16 << 20))
            .unwrap();
        run_ok("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        run_ok(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), at.to_str().unwrap()],
        );
        Self { at }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        // The loop device goes with the last reference to the mount.
        let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The file system at `at` frozen (`fsfreeze`: every write to it waits)
/// until this is dropped, or until a watchdog thaws it after `at_most`, so
/// a test that would hang on the frozen disk fails instead.
pub struct Frozen {
    at: PathBuf,
    thawed: Arc<std::sync::atomic::AtomicBool>,
    by_watchdog: Arc<std::sync::atomic::AtomicBool>,
}

impl Frozen {
    pub fn freeze(at: &Path, at_most: Duration) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        run_ok("fsfreeze", &["-f", at.to_str().unwrap()]);
        let (thawed, by_watchdog) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (path, done, flag) = (at.to_owned(), thawed.clone(), by_watchdog.clone());
        std::thread::spawn(move || {
            let began = std::time::Instant::now();
            while began.elapsed() < at_most {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            flag.store(true, Ordering::SeqCst);
            let _ = std::process::Command::new("fsfreeze")
                .arg("-u")
                .arg(&path)
                .status();
        });
        Self {
            at: at.to_owned(),
            thawed,
            by_watchdog,
        }
    }

    /// Thaws now; fails the test if the watchdog had to.
    pub fn thaw(&self) {
        use std::sync::atomic::Ordering;
        if !self.thawed.swap(true, Ordering::SeqCst) {
            let _ = std::process::Command::new("fsfreeze")
                .arg("-u")
                .arg(&self.at)
                .status();
        }
        assert!(
            !self.by_watchdog.load(Ordering::SeqCst),
            "the test was stuck behind the frozen disk until the watchdog thawed it"
        );
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = std::process::Command::new("fsfreeze")
                .arg("-u")
                .arg(&self.at)
                .status();
        }
    }
}

/// Runs `program` with `args`; panics unless it succeeds.
pub fn run_ok(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
