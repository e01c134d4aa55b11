//! Tests of the log's format, its readers and writer, and its page cache.

use super::testing::{drain, record};
use super::*;

fn write(w: &mut LogWriter, fd: Fd, bytes: &[u8]) {
    let mut buf = RecordBuf::new();
    buf.data_mut()[..bytes.len()].copy_from_slice(bytes);
    w.append(fd, &mut buf, bytes.len()).unwrap();
}

// Scenario: a follower reads a finished log whose pages are no longer
// in the page cache (read cold, from the disk). The cached read says so
// rather than wait, and the reader gets every byte through the blocking
// pool instead, exactly.
#[tokio::test]
async fn a_log_read_cold_comes_through_the_blocking_pool_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (mut w, log) = create(&path).unwrap();
    let big: Vec<u8> = (0..MAX_CHUNK).map(|i| (i % 251) as u8).collect();
    write(&mut w, Fd::Stdout, &big);
    write(&mut w, Fd::Stderr, b"tail");
    w.sync().await.unwrap();
    w.seal();
    let file = File::open(&path).unwrap();
    let tmpfs = nix::sys::statfs::statfs(dir.path())
        .unwrap()
        .filesystem_type()
        == nix::sys::statfs::TMPFS_MAGIC;
    // Clean pages (synced above) are dropped from the cache, except one
    // still in another CPU's batch of new pages: ask until it is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut probe = [0u8; 16];
    loop {
        nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        match fileio::read_cached(&file, &mut probe, 0) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // tmpfs pages are memory: they are never "not cached".
            Ok(n) if tmpfs => {
                assert_eq!(n, 16);
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            other => panic!("the page cache kept the log for 10 s: {other:?}"),
        }
    }
    let chunks = drain(log.snapshot().unwrap()).await;
    assert_eq!(
        chunks,
        [
            Chunk {
                fd: Fd::Stdout,
                data: big
            },
            Chunk {
                fd: Fd::Stderr,
                data: b"tail".to_vec()
            }
        ]
    );
}

/// Pages of `file` in `[offset, offset + len)` the page cache holds.
fn cached_pages(file: &File, offset: u64, len: u64) -> usize {
    use std::os::fd::AsRawFd;
    let page = 4096;
    let pages = len.div_ceil(page) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: a shared read-only mapping of `len` bytes of an open file,
    // unmapped before return; `vec` has one byte per page, as mincore(2)
    // writes.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        );
        assert_ne!(addr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
        let r = libc::mincore(addr, len as usize, vec.as_mut_ptr());
        libc::munmap(addr, len as usize);
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }
    vec.iter().filter(|b| **b & 1 == 1).count()
}

// Scenario: a job writes far more than anyone reads (nobody follows).
// The log's pages more than `KEEP` behind the writer leave the page
// cache once on the disk; the last `KEEP` stay for a follower close
// behind; every byte still reads back exactly, from the disk.
#[tokio::test]
async fn a_log_keeps_only_its_last_part_in_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (mut w, log) = create(&path).unwrap();
    let mut buf = RecordBuf::new();
    let mut expect = Vec::new();
    let total = cache::KEEP + 3 * cache::WINDOW + 12345;
    let mut n = 0u64;
    while w.len() < total {
        let len = MAX_CHUNK - (n as usize % 7);
        for (i, b) in buf.data_mut()[..len].iter_mut().enumerate() {
            *b = (n as usize * 31 + i) as u8;
        }
        expect.extend_from_slice(&buf.data_mut()[..len]);
        w.append(Fd::Stdout, &mut buf, len).unwrap();
        n += 1;
    }
    w.sync().await.unwrap();
    let committed = w.len();
    w.seal();
    let file = File::open(&path).unwrap();
    if nix::sys::statfs::statfs(dir.path())
        .unwrap()
        .filesystem_type()
        == nix::sys::statfs::TMPFS_MAGIC
    {
        eprintln!(
            "skipped the page-cache checks: the temporary directory is tmpfs, whose pages are its storage"
        );
    } else {
        let released = (committed - cache::KEEP) / cache::WINDOW * cache::WINDOW;
        assert_eq!(released, 3 * cache::WINDOW);
        // Released on the cache thread, which `sync` does not wait for.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cached_pages(&file, 0, released) != 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            cached_pages(&file, 0, released),
            0,
            "released part still cached"
        );
        let kept = committed - released;
        assert_eq!(
            cached_pages(&file, released, kept),
            kept.div_ceil(4096) as usize,
            "the last part should stay cached"
        );
    }
    let mut got = Vec::new();
    for c in drain(log.snapshot().unwrap()).await {
        assert_eq!(c.fd, Fd::Stdout);
        got.extend_from_slice(&c.data);
    }
    assert!(
        got == expect,
        "the log read back differs from what was written"
    );
}

#[tokio::test]
async fn records_of_one_fd_merge_and_fds_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, log) = create(&dir.path().join("log")).unwrap();
    write(&mut w, Fd::Stdout, b"a");
    write(&mut w, Fd::Stdout, b"b");
    write(&mut w, Fd::Stderr, b"E");
    write(&mut w, Fd::Stdout, b"c");
    w.seal();
    let chunks = drain(log.follow().unwrap()).await;
    assert_eq!(
        chunks,
        vec![
            Chunk {
                fd: Fd::Stdout,
                data: b"ab".to_vec()
            },
            Chunk {
                fd: Fd::Stderr,
                data: b"E".to_vec()
            },
            Chunk {
                fd: Fd::Stdout,
                data: b"c".to_vec()
            },
        ]
    );
}

#[tokio::test]
async fn merged_chunks_never_exceed_max_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, log) = create(&dir.path().join("log")).unwrap();
    let big = vec![7u8; MAX_CHUNK - 1];
    write(&mut w, Fd::Stdout, &big);
    write(&mut w, Fd::Stdout, b"xy");
    w.seal();
    let chunks = drain(log.follow().unwrap()).await;
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].data.len(), MAX_CHUNK - 1);
    assert_eq!(chunks[1].data, b"xy");
}

#[tokio::test]
async fn a_follower_waits_for_appends_and_ends_at_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, log) = create(&dir.path().join("log")).unwrap();
    let mut r = log.follow().unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(c) = r.next().await.unwrap() {
            got.extend(c.data);
        }
        got
    });
    for i in 0..100u8 {
        write(&mut w, Fd::Stdout, &[i]);
        tokio::task::yield_now().await;
    }
    w.seal();
    assert_eq!(reader.await.unwrap(), (0..100u8).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_snapshot_stops_at_the_length_when_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, log) = create(&dir.path().join("log")).unwrap();
    write(&mut w, Fd::Stdout, b"before");
    let snap = log.snapshot().unwrap();
    write(&mut w, Fd::Stdout, b"after");
    let chunks = drain(snap).await;
    assert_eq!(
        chunks,
        vec![Chunk {
            fd: Fd::Stdout,
            data: b"before".to_vec()
        }]
    );
    drop(w);
}

#[tokio::test]
async fn a_dropped_writer_ends_its_followers() {
    // Scenario: the supervisor task is cancelled; followers must not hang.
    let dir = tempfile::tempdir().unwrap();
    let (mut w, log) = create(&dir.path().join("log")).unwrap();
    write(&mut w, Fd::Stderr, b"x");
    let r = log.follow().unwrap();
    drop(w);
    assert_eq!(
        drain(r).await,
        vec![Chunk {
            fd: Fd::Stderr,
            data: b"x".to_vec()
        }]
    );
}

#[tokio::test]
async fn a_corrupt_header_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (mut w, log) = create(&path).unwrap();
    write(&mut w, Fd::Stdout, b"ok");
    // Overwrite the fd tag behind the writer's back.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[9], 0)
        .unwrap();
    w.seal();
    let mut r = log.follow().unwrap();
    assert!(matches!(
        r.next().await,
        Err(OutputError::Corrupt { offset: 0 })
    ));
}

#[tokio::test]
async fn recover_keeps_complete_records_and_cuts_a_torn_tail() {
    // Scenario: the daemon was killed in the middle of writing a record;
    // the next one keeps every complete record and cuts the rest.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut bytes = record(1, b"hello ");
    bytes.extend(record(2, b"E"));
    let whole = bytes.len() as u64;
    let torn = record(1, b"world, never finished");
    bytes.extend(&torn[..9]);
    std::fs::write(&path, &bytes).unwrap();

    let (log, found) = recover(&path).unwrap();
    assert_eq!(found, Recovered { data: 7, cut: 9 });
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
    assert!(log.is_sealed());
    assert_eq!(log.data_len(), 7);
    assert_eq!(
        drain(log.follow().unwrap()).await,
        vec![
            Chunk {
                fd: Fd::Stdout,
                data: b"hello ".to_vec()
            },
            Chunk {
                fd: Fd::Stderr,
                data: b"E".to_vec()
            }
        ]
    );
}

#[tokio::test]
async fn recover_stops_at_an_invalid_header_and_creates_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut bytes = record(1, b"ok");
    bytes.extend(record(7, b"bad tag"));
    std::fs::write(&path, &bytes).unwrap();
    let (log, found) = recover(&path).unwrap();
    assert_eq!(found, Recovered { data: 2, cut: 12 });
    assert_eq!(std::fs::read(&path).unwrap(), record(1, b"ok"));
    assert_eq!(drain(log.follow().unwrap()).await.len(), 1);

    let missing = dir.path().join("missing");
    let (log, found) = recover(&missing).unwrap();
    assert_eq!(found, Recovered { data: 0, cut: 0 });
    assert_eq!(std::fs::read(&missing).unwrap(), b"");
    assert!(drain(log.follow().unwrap()).await.is_empty());
}

#[tokio::test]
async fn a_sealed_log_reopens_with_its_recorded_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (mut w, _) = create(&path).unwrap();
    write(&mut w, Fd::Stdout, b"abc");
    w.sync().await.unwrap();
    w.seal();
    let log = open_sealed(&path, 3).unwrap();
    assert_eq!(
        (log.is_sealed(), log.data_len(), log.committed_len()),
        (true, 3, 8)
    );
    assert_eq!(
        drain(log.snapshot().unwrap()).await,
        vec![Chunk {
            fd: Fd::Stdout,
            data: b"abc".to_vec()
        }]
    );
    assert!(open_sealed(&dir.path().join("gone"), 0).is_err());
}
