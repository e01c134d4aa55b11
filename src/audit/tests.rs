use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::sync::Arc;

use serde_json::Value;

use super::*;

fn alice() -> Identity {
    Identity::from_spki_der(b"alice")
}

fn bob() -> Identity {
    Identity::from_spki_der(b"bob")
}

fn entry() -> Entry<'static> {
    Entry {
        identity: alice(),
        subject: "CN=alice",
        peer: "127.0.0.1:5555".parse().unwrap(),
        rpc: Rpc::Stop,
        job: Some("67e55044-10b1-426f-9247-bb680e5fe0c8".to_owned()),
        owner: Some(bob()),
        admin: true,
        outcome: Outcome::Allowed,
        reason: None,
        grants: &[],
    }
}

/// 2026-11-30T03:04:05.123456789Z.
fn fixed_time() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_796_007_845_123_456_789).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_owned)
        .collect()
}

fn open_errno(result: Result<AuditLog, AuditError>) -> Option<i32> {
    match result {
        Err(AuditError::Open { source, .. }) => source.raw_os_error(),
        other => panic!("expected an Open error, got {other:?}"),
    }
}

// A line is the documented keys in the documented order, exactly.
#[test]
fn line_format_is_exact() {
    let line = line(&entry(), 0, fixed_time()).unwrap();
    let expected = format!(
        concat!(
            r#"{{"time":"2026-11-30T03:04:05.123456789Z","identity":"{}","subject":"CN=alice","#,
            r#""peer":"127.0.0.1:5555","rpc":"Stop","job":"67e55044-10b1-426f-9247-bb680e5fe0c8","#,
            r#""owner":"{}","admin":true,"outcome":"allowed","reason":null}}"#,
            "\n"
        ),
        alice(),
        bob()
    );
    assert_eq!(String::from_utf8(line).unwrap(), expected);
}

// Absent job, owner and reason are null; a denial writes "denied"; IPv6
// peers keep their brackets; a whole second has no fraction.
#[test]
fn nulls_denials_and_ipv6() {
    let denied = Entry {
        peer: "[2001:db8::1]:443".parse().unwrap(),
        rpc: Rpc::List,
        job: None,
        owner: None,
        admin: false,
        outcome: Outcome::Denied,
        reason: Some("denylisted"),
        ..entry()
    };
    let time = OffsetDateTime::from_unix_timestamp(1_796_007_845).unwrap();
    let line = String::from_utf8(line(&denied, 0, time).unwrap()).unwrap();
    let expected = format!(
        concat!(
            r#"{{"time":"2026-11-30T03:04:05Z","identity":"{}","subject":"CN=alice","#,
            r#""peer":"[2001:db8::1]:443","rpc":"List","job":null,"owner":null,"admin":false,"#,
            r#""outcome":"denied","reason":"denylisted"}}"#,
            "\n"
        ),
        alice()
    );
    assert_eq!(line, expected);
    let failed = Entry {
        outcome: Outcome::Failed,
        ..entry()
    };
    let line: Value = serde_json::from_slice(&super::line(&failed, 0, time).unwrap()).unwrap();
    assert_eq!(line["outcome"], "failed");
}

// A recorded line parses as JSON with exactly the entry's fields, stamped
// with the current time.
#[tokio::test]
async fn recorded_line_parses_with_exact_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    let before = OffsetDateTime::now_utc();
    log.record(&entry()).await.unwrap();
    let after = OffsetDateTime::now_utc();

    let lines = lines(&path);
    assert_eq!(lines.len(), 1);
    let value: Value = serde_json::from_str(&lines[0]).unwrap();
    let object = value.as_object().unwrap();
    assert_eq!(object.len(), 10);
    let time = OffsetDateTime::parse(object["time"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(
        before <= time && time <= after,
        "{time} not in {before}..{after}"
    );
    assert_eq!(object["identity"], alice().to_string());
    assert_eq!(object["subject"], "CN=alice");
    assert_eq!(object["peer"], "127.0.0.1:5555");
    assert_eq!(object["rpc"], "Stop");
    assert_eq!(object["job"], "67e55044-10b1-426f-9247-bb680e5fe0c8");
    assert_eq!(object["owner"], bob().to_string());
    assert_eq!(object["admin"], true);
    assert_eq!(object["outcome"], "allowed");
    assert_eq!(object["reason"], Value::Null);
}

// A certificate subject and a job id crafted to break the line (newline,
// quote, backslash, NUL, escape sequences, U+2028) stay on one line and
// read back unchanged.
#[tokio::test]
async fn hostile_text_stays_on_one_line_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    let subject = "CN=eve\n{\"forged\":true}\r\n\"O=\\\\x\"";
    let job = "x\"\n\u{0}\u{1b}[31m\u{7f}\u{2028}\\";
    log.record(&Entry {
        subject,
        job: Some(job.to_owned()),
        outcome: Outcome::Denied,
        reason: Some("malformed_job_id"),
        ..entry()
    })
    .await
    .unwrap();
    log.record(&entry()).await.unwrap();

    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches('\n').count(), 2);
    let lines = lines(&path);
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["subject"], subject);
    assert_eq!(first["job"], job);
    assert!(!lines[0].contains('\r') && !lines[0].contains('\u{0}'));
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["subject"], "CN=alice");
}

// A new audit file is created private: mode 0600.
#[test]
fn new_file_is_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    AuditLog::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
}

// An existing audit file others can read (0644) is tightened to 0600, and
// its content kept.
#[test]
fn existing_0644_file_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    fs::write(&path, "old line\n").unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    AuditLog::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read_to_string(&path).unwrap(), "old line\n");
}

// Opening an existing log, or reopening it, appends after what is there and
// never truncates.
#[tokio::test]
async fn appends_never_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    fs::write(&path, "line from an earlier run\n").unwrap();
    let log = AuditLog::open(&path).unwrap();
    log.record(&entry()).await.unwrap();
    log.reopen().await.unwrap();
    log.record(&entry()).await.unwrap();
    drop(log);
    let log = AuditLog::open(&path).unwrap();
    log.record(&entry()).await.unwrap();

    let lines = lines(&path);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "line from an earlier run\n");
    for line in &lines[1..] {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["subject"], "CN=alice");
    }
}

// 8 tasks on 4 threads recording 200 lines each at once: 1600 complete
// lines, each entry exactly once, none torn or interleaved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = Arc::new(AuditLog::open(&path).unwrap());
    // A long subject makes a torn or interleaved write likely to show.
    let padding = Arc::new("x".repeat(4000));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let (log, padding) = (Arc::clone(&log), Arc::clone(&padding));
        tasks.spawn(async move {
            for i in 0..200 {
                let subject = format!("CN={task}-{i},O={padding}");
                log.record(&Entry {
                    subject: &subject,
                    ..entry()
                })
                .await
                .unwrap();
            }
        });
    }
    tasks.join_all().await;

    let lines = lines(&path);
    assert_eq!(lines.len(), 1600);
    let mut seen = HashSet::new();
    for line in &lines {
        assert!(line.ends_with('\n'));
        let value: Value = serde_json::from_str(line).unwrap();
        let subject = value["subject"].as_str().unwrap();
        let (who, rest) = subject
            .strip_prefix("CN=")
            .unwrap()
            .split_once(",O=")
            .unwrap();
        assert_eq!(rest, *padding);
        assert!(seen.insert(who.to_owned()), "{who} twice");
    }
    assert_eq!(seen.len(), 1600);
}

// Rotation: the log was renamed away, reopen creates a new file (0600) at
// the path and later lines go there; the renamed file keeps the old lines.
#[tokio::test]
async fn reopen_after_rename_writes_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let log = AuditLog::open(&path).unwrap();
    log.record(&entry()).await.unwrap();
    fs::rename(&path, &rotated).unwrap();
    // Before the reopen, lines still follow the renamed file.
    log.record(&entry()).await.unwrap();
    log.reopen().await.unwrap();
    log.record(&Entry {
        subject: "CN=after",
        ..entry()
    })
    .await
    .unwrap();

    assert_eq!(lines(&rotated).len(), 2);
    let new = lines(&path);
    assert_eq!(new.len(), 1);
    let value: Value = serde_json::from_str(&new[0]).unwrap();
    assert_eq!(value["subject"], "CN=after");
    assert_eq!(mode(&path), 0o600);
}

// A reopen that fails (a directory now sits at the path) keeps the old
// file: lines keep going to it.
#[tokio::test]
async fn failed_reopen_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let log = AuditLog::open(&path).unwrap();
    fs::rename(&path, &rotated).unwrap();
    fs::create_dir(&path).unwrap();
    assert!(matches!(log.reopen().await, Err(AuditError::Open { .. })));
    log.record(&entry()).await.unwrap();
    assert_eq!(lines(&rotated).len(), 1);
}

// A symbolic link at the path is refused (ELOOP), even to a regular file,
// and its target is neither written nor chmod-ed.
#[test]
fn symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    fs::write(&target, "precious\n").unwrap();
    fs::set_permissions(&target, Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("audit.log");
    symlink(&target, &path).unwrap();

    let err = AuditLog::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot open the audit log {}", path.display())
    );
    let AuditError::Open { source, .. } = err else {
        panic!("expected Open, got {err:?}");
    };
    assert_eq!(source.raw_os_error(), Some(libc::ELOOP));
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(mode(&target), 0o644);

    // A dangling link is refused too, rather than creating its target.
    let dangling = dir.path().join("dangling.log");
    symlink(dir.path().join("nowhere"), &dangling).unwrap();
    assert_eq!(open_errno(AuditLog::open(&dangling)), Some(libc::ELOOP));
    assert!(!dir.path().join("nowhere").exists());
}

// A directory at the path is refused.
#[test]
fn directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(open_errno(AuditLog::open(dir.path())), Some(libc::EISDIR));
}

// A FIFO at the path is refused at once, with or without a reader (opening
// it for writing must not wait for one), and its mode is left alone.
#[test]
fn fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    // No reader: the kernel refuses a non-blocking writer.
    assert!(matches!(
        AuditLog::open(&path),
        Err(AuditError::Open { source, .. }) if source.raw_os_error() == Some(libc::ENXIO)
    ));
    // With a reader the open succeeds, and the type check refuses it.
    let _reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    assert!(matches!(
        AuditLog::open(&path),
        Err(AuditError::Open { source, .. }) if source.to_string() == "not a regular file"
    ));
    assert_eq!(mode(&path), 0o644);
}

// Debug shows the path and nothing else.
#[test]
fn debug_shows_the_path_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    assert_eq!(
        format!("{log:?}"),
        format!("AuditLog {{ path: {path:?}, .. }}")
    );
    assert_eq!(log.path(), path);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_refusals_is_counted_not_written() {
    // Scenario: a denylisted client retries in a tight loop; the audit log
    // gets its first refusals, then a count instead of one line each, and
    // another identity's refusals and every allowed request still appear.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let mut denied = entry();
    denied.outcome = Outcome::Denied;
    denied.reason = Some("denylisted");
    let burst = DENIED_LINES_BURST as usize;
    for _ in 0..burst + 50 {
        log.record(&denied).await.unwrap();
    }
    let mut other = denied.clone();
    other.identity = Identity::from_spki_der(b"someone else");
    log.record(&other).await.unwrap();
    log.record(&entry()).await.unwrap();
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let lines = read();
    assert_eq!(lines.len(), burst + 2);
    assert!(lines.iter().all(|l| l.get("suppressed").is_none()));
    assert_eq!(lines[burst]["identity"], other.identity.to_string());
    assert_eq!(lines[burst + 1]["outcome"], "allowed");
    // Once a token is back, the next refusal line carries the count.
    tokio::time::advance(std::time::Duration::from_millis(
        1000 / u64::from(DENIED_LINES_PER_SECOND),
    ))
    .await;
    log.record(&denied).await.unwrap();
    let lines = read();
    assert_eq!(lines.len(), burst + 3);
    assert_eq!(lines[burst + 2]["suppressed"], Value::from(50));
}
